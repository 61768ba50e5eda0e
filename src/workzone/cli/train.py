"""``workzone train ...``: every command that reproduces a shipped model, as one sub-command group.

``train classifier`` (the default: ``workzone train MANIFEST`` still works), ``train loso``,
``train loso-fusion``, ``train export-classifier``, ``train compact-data``, ``train detector`` and
``train eval-detector``. The old top-level names (``loso``, ``train-detector``, ...) stay as hidden
aliases. The commands only parse options; the work is in :mod:`workzone.training`. Heavy imports
(torch, onnxruntime) happen inside the commands so that ``workzone --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Annotated, Optional

import typer

from workzone.io.atomic import atomic_write_text
from typer.core import TyperGroup

__all__ = ["register"]

_DEVICE = typer.Option(help="torch device: cuda or cpu")
_RECIPE = typer.Option(help="recipe name (see workzone.training.loop.RECIPES): partial, partial-hp, full, frozen, ...")


class _ClassifierByDefault(TyperGroup):
    """A group whose first argument, when it names no sub-command, is the classifier's MANIFEST."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: the CLI context of typer's click
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["classifier", *args]
        return super().parse_args(ctx, args)


def register(app: typer.Typer) -> None:
    """Add the ``train`` group to ``app``, and the old top-level names as hidden aliases."""
    from workzone.cli.detector import eval_detector_cmd, train_detector_cmd

    group = typer.Typer(cls=_ClassifierByDefault, no_args_is_help=True,
                        help="Train the whole-image classifier (default) and the cone detector: classifier, loso, "
                             "loso-fusion, export-classifier, compact-data, detector, eval-detector. The default "
                             "pipeline's object detector is trained on a GPU by `python -m "
                             "workzone.training.object_train` (OBJECT_DETECTOR_CARD.md, Reproduce).")
    commands = {"classifier": train, "loso": loso, "loso-fusion": loso_fusion, "export-classifier": export_classifier,
                "compact-data": compact_data, "detector": train_detector_cmd, "eval-detector": eval_detector_cmd}
    for name, fn in commands.items():
        group.command(name)(fn)
    app.add_typer(group, name="train")
    aliases = {"loso": loso, "loso-fusion": loso_fusion, "export-classifier": export_classifier,
               "compact-data": compact_data, "train-detector": train_detector_cmd, "eval-detector": eval_detector_cmd}
    for name, fn in aliases.items():
        app.command(name, hidden=True)(fn)


def compact_data(
    manifest: Annotated[Path, typer.Argument(help="roadwork-v1 manifest.csv")],
    out: Annotated[Path, typer.Option(help="destination folder (keep it git-ignored, e.g. .data/roadwork-v1-320)")],
    max_side: Annotated[int, typer.Option(help="longest side in pixels")] = 320,
    quality: Annotated[int, typer.Option(help="JPEG quality")] = 88,
) -> None:
    """Write the downscaled copy of the data set that the shipped model was trained from."""
    from workzone.training.data import make_compact_copy

    typer.echo(make_compact_copy(manifest, out, max_side=max_side, quality=quality))


def train(
    manifest: Annotated[Path, typer.Argument(help="roadwork-v1 manifest.csv (boxes.csv beside it)")],
    out: Annotated[Path, typer.Option(help="output folder: model.pt, roadwork_lite0.onnx/.json, dev_eval.json")],
    seed: Annotated[int, typer.Option(help="seed of weights, sampling and augmentation")] = 0,
    device: Annotated[str, _DEVICE] = "cuda",
    epochs: Annotated[Optional[int], typer.Option(help="override the recipe's epochs")] = None,
    recipe: Annotated[str, _RECIPE] = "partial",
    workers: Annotated[int, typer.Option(help="data-loader workers")] = 8,
    weights: Annotated[Optional[Path], typer.Option(help="ImageNet weights file (default: the weights package)")] = None,
    dev_manifest: Annotated[Optional[Path], typer.Option(help="manifest whose dev split is scored (default: MANIFEST)")] = None,
    fp16: Annotated[bool, typer.Option(help="store the ONNX weights as fp16 (half the file; fp32 arithmetic)")] = False,
    name: Annotated[str, typer.Option(help="file stem of the .onnx and .json written")] = "roadwork_lite0",
) -> None:
    """Train the shipped classifier on the train split, score dev through ONNX, write the model."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from workzone.training.data import load_samples
    from workzone.training.loop import prepare_data, recipe_from_name, train_model
    from workzone.training.loso import train_splits

    console = Console()
    rec = recipe_from_name(recipe, epochs=epochs)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_samples(manifest, splits=train_splits(rec))
    data = prepare_data(samples, manifest.parent / "boxes.csv", erase=rec.erase_neg > 0)
    console.print(f"{len(samples)} training images, {len(data.cutouts)} cone cutouts, recipe {rec.name}")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                  console=console) as bar:
        task = bar.add_task("training", total=None, info="")

        def progress(step: int, total: int, info: dict) -> None:
            bar.update(task, completed=step, total=total, info=f"epoch {info['epoch']} loss {info['loss']:.3f}")

        model = train_model(data, rec, seed=seed, device=device, workers=workers,
                            weights_path=str(weights) if weights else None, progress=progress)
    from workzone.training.export import export_and_score, save_state

    save_state(model, out / "model.pt")
    export_and_score(model, dev_manifest or manifest, out, rec, seed, console.print, fp16=fp16, name=name)


def export_classifier(
    checkpoint: Annotated[Path, typer.Argument(help="model.pt written by train or loso")],
    manifest: Annotated[Path, typer.Argument(help="manifest whose dev split is scored")],
    out: Annotated[Path, typer.Option(help="output folder")],
    recipe: Annotated[str, _RECIPE] = "partial",
    seed: Annotated[int, typer.Option(help="the seed the checkpoint was trained with (recorded)")] = 0,
    fp16: Annotated[bool, typer.Option(help="store the weights as fp16 (half the file; fp32 arithmetic)")] = False,
    name: Annotated[str, typer.Option(help="file stem of the .onnx and .json written")] = "roadwork_lite0",
) -> None:
    """Export a checkpoint to ONNX + sidecar, check parity and score dev through onnxruntime."""
    from rich.console import Console

    from workzone.training.export import export_and_score, load_state
    from workzone.training.loop import recipe_from_name
    from workzone.training.model import build_model

    rec = recipe_from_name(recipe)
    model = build_model(rec.arch, pretrained=False, dropout=rec.dropout)
    load_state(model, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    export_and_score(model, manifest, out, rec, seed, Console().print, fp16=fp16, name=name)


def loso(
    manifest: Annotated[Path, typer.Argument(help="roadwork-v1 manifest.csv")],
    out: Annotated[Path, typer.Option(help="results JSON")] = Path("loso.json"),
    recipe: Annotated[Optional[list[str]], typer.Option(help="recipe(s) to compare; repeat the option")] = None,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    device: Annotated[str, _DEVICE] = "cuda",
    epochs: Annotated[Optional[int], typer.Option(help="override every recipe's epochs")] = None,
    workers: Annotated[int, typer.Option(help="data-loader workers")] = 8,
    weights: Annotated[Optional[Path], typer.Option(help="ImageNet weights file")] = None,
    full: Annotated[bool, typer.Option(help="also train on all sources and score dev")] = True,
    checkpoints: Annotated[Optional[Path], typer.Option(
        help="folder for the models: <recipe>.pt (all sources) and <recipe>__without_<source>.pt")] = None,
) -> None:
    """Leave-one-source-out: train without WMaia9, without CamVid (and on all), print the table."""
    from rich.console import Console
    from rich.table import Table

    from workzone.training.export import json_safe
    from workzone.training.loop import recipe_from_name
    from workzone.training.loso import format_table, run_loso

    console = Console()
    results = []
    for name in recipe or ["partial"]:
        rec = recipe_from_name(name, epochs=epochs)

        def save(tag: str, model, rec=rec) -> None:  # noqa: ANN001
            if checkpoints is not None:
                from workzone.training.export import save_state

                checkpoints.mkdir(parents=True, exist_ok=True)
                name = f"{rec.name}.pt" if tag == "full" else f"{rec.name}__without_{tag}.pt"
                save_state(model, checkpoints / name, half=True)

        results.append(run_loso(manifest, rec, seed=seed, device=device, workers=workers,
                                weights_path=str(weights) if weights else None, with_full=full,
                                log=console.print, on_model=save))
        atomic_write_text(out, json.dumps(json_safe(results), indent=2) + "\n")
    table = Table(title="leave-one-source-out (threshold: logit 0)")
    for col in ("recipe", "w/o WMaia9: recall", "w/o CamVid: specificity", "dev MCC (all sources)", "dev MCC of others"):
        table.add_column(col)
    for row in format_table(results):
        table.add_row(*row)
    console.print(table)


def _source_paths(pairs: list[str], option: str) -> dict[str, list[Path]]:
    """``SOURCE=PATH`` option values grouped by source (a source may repeat)."""
    out: dict[str, list[Path]] = {}
    for pair in pairs:
        source, sep, path = pair.partition("=")
        if not sep or not source or not path:
            raise typer.BadParameter(f"expected SOURCE=PATH, got {pair!r}", param_hint=option)
        if path != "builtin" and not Path(path).is_file():
            raise typer.BadParameter(f"{path}: no such file", param_hint=option)
        out.setdefault(source, []).append(Path(path))
    return out


def loso_fusion(
    manifest: Annotated[Path, typer.Argument(help="roadwork-v1 manifest.csv (train and dev rows are scored)")],
    classifier: Annotated[list[str], typer.Option(
        help="SOURCE=checkpoint of a classifier trained without SOURCE (repeat; several per source are fused "
             "as an ensemble; from `loso --checkpoints`)")],
    detector: Annotated[list[str], typer.Option(
        help="SOURCE=cone_detector.onnx trained without SOURCE, or SOURCE=builtin for the shipped one (repeat)")],
    recipe: Annotated[str, _RECIPE] = "partial",
    ocr: Annotated[bool, typer.Option(help="also fuse the sign-OCR stage")] = True,
    device: Annotated[str, _DEVICE] = "cpu",
    balanced: Annotated[bool, typer.Option(help="fit fusion for a 50/50 class prior (as `tune --balanced`)")] = False,
    out: Annotated[Path, typer.Option(help="results JSON")] = Path("loso_fusion.json"),
) -> None:
    """Leave-one-source-out of the fused fast tiers (classifier + cone detector + OCR), fusion fitted on the others' dev."""
    from rich.console import Console

    from workzone.training.export import json_safe
    from workzone.training.loso_fusion import run_loso_fusion

    builtin = Path(__file__).resolve().parents[1] / "models" / "cone_detector.onnx"
    dets = {k: builtin if str(v[-1]) == "builtin" else v[-1] for k, v in _source_paths(detector, "--detector").items()}
    result = run_loso_fusion(manifest, _source_paths(classifier, "--classifier"), dets, recipe=recipe, ocr=ocr,
                             device=device, balanced=balanced, log=Console().print)
    atomic_write_text(out, json.dumps(json_safe(result), indent=2) + "\n")
