"""``workzone train``, ``workzone loso`` and ``workzone export-classifier``: the tier-1 classifier.

Heavy imports (torch, onnxruntime) happen inside the commands so that ``workzone --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from workzone.io.atomic import atomic_write_text

__all__ = ["register"]

_DEVICE = typer.Option(help="torch device: cuda or cpu")
_RECIPE = typer.Option(help="recipe name (see workzone.training.loop.RECIPES): partial, partial-hp, full, frozen, ...")


def register(app: typer.Typer) -> None:
    """Add the training commands to ``app``."""
    app.command("train")(train)
    app.command("loso")(loso)
    app.command("export-classifier")(export_classifier)
    app.command("compact-data")(compact_data)
    app.command("loso-fusion")(loso_fusion)


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
    import torch

    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / "model.pt")
    _export_and_score(model, dev_manifest or manifest, out, rec, seed, console, fp16=fp16, name=name)


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
    import torch
    from rich.console import Console

    from workzone.training.loop import recipe_from_name
    from workzone.training.model import build_model

    rec = recipe_from_name(recipe)
    model = build_model(rec.arch, pretrained=False, dropout=rec.dropout)
    model.load_state_dict({k: v.float() for k, v in torch.load(checkpoint, map_location="cpu", weights_only=True).items()})
    out.mkdir(parents=True, exist_ok=True)
    _export_and_score(model, manifest, out, rec, seed, Console(), fp16=fp16, name=name)


def _export_and_score(model, manifest: Path, out: Path, rec, seed: int, console, *, fp16: bool = False,  # noqa: ANN001
                      name: str = "roadwork_lite0") -> None:
    from workzone.training.data import load_pixels, load_samples
    from workzone.training.export import check_parity, export_onnx, json_safe, onnx_logits, store_weights_fp16, write_sidecar
    from workzone.training.loso import evaluate_samples, train_splits

    onnx_path = export_onnx(model, out / f"{name}.onnx", size=rec.size)
    dev = load_samples(manifest, splits=("dev",))
    pixels = [load_pixels(s.path) for s in dev]
    parity = check_parity(model, onnx_path, pixels[:16], size=rec.size, mode=rec.resize)
    logits = onnx_logits(onnx_path, pixels, size=rec.size, mode=rec.resize)
    metrics: dict = {"parity_max_abs_logit_diff": parity, "weights": "fp32"}
    if fp16:
        # Parity is checked on the fp32 graph; the fp16 weights' drift is measured on all of dev.
        store_weights_fp16(onnx_path, onnx_path)
        half = onnx_logits(onnx_path, pixels, size=rec.size, mode=rec.resize)
        metrics.update(weights="fp16 (cast to fp32 at load)", fp16_max_abs_logit_diff=float(np.abs(half - logits).max()),
                       fp16_decisions_changed=int(((half > 0) != (logits > 0)).sum()))
        logits = half
    ev = evaluate_samples(dev, logits, pixels)
    atomic_write_text(out / "dev_eval.json", json.dumps(json_safe(ev), indent=2) + "\n")
    metrics.update({"dev_onnx": ev["overall"], "dev_per_source": ev["per_source"], "dev_light": ev["light"]})
    write_sidecar(out / f"{name}.json", size=rec.size, mode=rec.resize, arch=rec.arch, seed=seed,
                  recipe=rec.to_dict(), trained_on="roadwork-v1 splits " + "+".join(train_splits(rec)), metrics=metrics)
    console.print(f"dev MCC (onnxruntime) {ev['overall']['mcc']:.3f}; parity max |diff| {parity:.2e}")
    for src, m in ev["per_source"].items():
        console.print(f"  {src:18s} n={m['n']:4d} MCC {m['mcc']:.3f} recall {m['recall']:.3f} spec {m['specificity']:.3f}")


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
                import torch

                checkpoints.mkdir(parents=True, exist_ok=True)
                name = f"{rec.name}.pt" if tag == "full" else f"{rec.name}__without_{tag}.pt"
                torch.save({k: v.cpu().half() for k, v in model.state_dict().items()}, checkpoints / name)

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
