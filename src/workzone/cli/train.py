"""``workzone train``, ``workzone loso`` and ``workzone export-classifier``: the tier-1 classifier.

Heavy imports (torch, onnxruntime) happen inside the commands so that ``workzone --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["register"]

_DEVICE = typer.Option(help="torch device: cuda or cpu")
_RECIPE = typer.Option(help="recipe name: frozen, partial, full, full-nosynth")


def register(app: typer.Typer) -> None:
    """Add the training commands to ``app``."""
    app.command("train")(train)
    app.command("loso")(loso)
    app.command("export-classifier")(export_classifier)
    app.command("compact-data")(compact_data)


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
    data = prepare_data(samples, manifest.parent / "boxes.csv")
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
    _export_and_score(model, dev_manifest or manifest, out, rec, seed, console)


def export_classifier(
    checkpoint: Annotated[Path, typer.Argument(help="model.pt written by train or loso")],
    manifest: Annotated[Path, typer.Argument(help="manifest whose dev split is scored")],
    out: Annotated[Path, typer.Option(help="output folder")],
    recipe: Annotated[str, _RECIPE] = "partial",
    seed: Annotated[int, typer.Option(help="the seed the checkpoint was trained with (recorded)")] = 0,
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
    _export_and_score(model, manifest, out, rec, seed, Console())


def _export_and_score(model, manifest: Path, out: Path, rec, seed: int, console) -> None:  # noqa: ANN001
    from workzone.training.data import load_pixels, load_samples
    from workzone.training.export import check_parity, export_onnx, json_safe, onnx_logits, write_sidecar
    from workzone.training.loso import evaluate_samples, train_splits

    onnx_path = export_onnx(model, out / "roadwork_lite0.onnx", size=rec.size)
    dev = load_samples(manifest, splits=("dev",))
    pixels = [load_pixels(s.path) for s in dev]
    parity = check_parity(model, onnx_path, pixels[:16], size=rec.size, mode=rec.resize)
    logits = onnx_logits(onnx_path, pixels, size=rec.size, mode=rec.resize)
    ev = evaluate_samples(dev, logits, pixels)
    (out / "dev_eval.json").write_text(json.dumps(json_safe(ev), indent=2) + "\n", encoding="utf-8")
    metrics = {"dev_onnx": ev["overall"], "dev_per_source": ev["per_source"], "dev_light": ev["light"],
               "parity_max_abs_logit_diff": parity}
    write_sidecar(out / "roadwork_lite0.json", size=rec.size, mode=rec.resize, arch=rec.arch, seed=seed,
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
    checkpoints: Annotated[Optional[Path], typer.Option(help="folder for <recipe>.pt of the all-source models")] = None,
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
            if checkpoints is not None and tag == "full":
                import torch

                checkpoints.mkdir(parents=True, exist_ok=True)
                torch.save({k: v.cpu().half() for k, v in model.state_dict().items()}, checkpoints / f"{rec.name}.pt")

        results.append(run_loso(manifest, rec, seed=seed, device=device, workers=workers,
                                weights_path=str(weights) if weights else None, with_full=full,
                                log=console.print, on_model=save))
        out.write_text(json.dumps(json_safe(results), indent=2) + "\n", encoding="utf-8")
    table = Table(title="leave-one-source-out (threshold: logit 0)")
    for col in ("recipe", "w/o WMaia9: recall", "w/o CamVid: specificity", "dev MCC (all sources)", "dev MCC of others"):
        table.add_column(col)
    for row in format_table(results):
        table.add_row(*row)
    console.print(table)
