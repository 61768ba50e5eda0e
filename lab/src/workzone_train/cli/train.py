"""``workzone train classifier``, ``loso``, ``loso-fusion``, ``export-classifier``, ``compact-data``.

Each function is one command, registered under ``workzone train`` by an entry point of the
``workzone.train`` group (``lab/pyproject.toml``). The commands only parse options; the work is in
:mod:`workzone_train`. Heavy imports (torch, onnxruntime) happen inside the commands so that
``workzone --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from workzone.io.atomic import atomic_write_text

__all__ = ["compact_data", "export_classifier", "loso", "loso_fusion", "train"]

_DEVICE = typer.Option(help="torch device: cuda or cpu")
_RECIPE = typer.Option(help="recipe name (see workzone_train.loop.RECIPES): partial, partial-hp, full, frozen, ...")


def compact_data(
    manifest: Annotated[Path, typer.Argument(help="roadwork-v1 manifest.csv")],
    out: Annotated[Path, typer.Option(help="destination folder (keep it git-ignored, e.g. .data/roadwork-v1-320)")],
    max_side: Annotated[int, typer.Option(help="longest side in pixels")] = 320,
    quality: Annotated[int, typer.Option(help="JPEG quality")] = 88,
) -> None:
    """Write the downscaled copy of the data set that the shipped model was trained from."""
    from workzone_train.data import make_compact_copy

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

    from workzone_train.data import load_samples
    from workzone_train.loop import prepare_data, recipe_from_name, train_model
    from workzone_train.loso import train_splits

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
    from workzone_train.export import export_and_score, save_state

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

    from workzone_train.export import export_and_score, load_state
    from workzone_train.loop import recipe_from_name
    from workzone_train.model import build_model

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

    from workzone_train.export import json_safe
    from workzone_train.loop import recipe_from_name
    from workzone_train.loso import format_table, run_loso

    console = Console()
    results = []
    for name in recipe or ["partial"]:
        rec = recipe_from_name(name, epochs=epochs)

        def save(tag: str, model, rec=rec) -> None:  # noqa: ANN001
            if checkpoints is not None:
                from workzone_train.export import save_state

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

    from workzone_train.export import json_safe
    from workzone_train.loso_fusion import run_loso_fusion

    from workzone.stages.base import StageContext

    builtin = StageContext().resolve("builtin:cone_detector.onnx")
    dets = {k: builtin if str(v[-1]) == "builtin" else v[-1] for k, v in _source_paths(detector, "--detector").items()}
    result = run_loso_fusion(manifest, _source_paths(classifier, "--classifier"), dets, recipe=recipe, ocr=ocr,
                             device=device, balanced=balanced, log=Console().print)
    atomic_write_text(out, json.dumps(json_safe(result), indent=2) + "\n")
