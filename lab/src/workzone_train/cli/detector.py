"""``workzone train detector`` and ``workzone train eval-detector``: the embedded cone detector.

The commands only parse options; training is in :mod:`workzone_train.detector_loop`, evaluation in
:mod:`workzone_train.detector_eval`. Heavy imports (torch, onnxruntime) happen inside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from workzone.io.atomic import atomic_write_text
from workzone.stages.base import StageContext

__all__ = ["train_detector_cmd", "eval_detector_cmd"]


def train_detector_cmd(
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False, help="roadwork-v1 manifest.csv"),
    boxes: Path = typer.Option(..., exists=True, dir_okay=False, help="boxes.csv (path,class,cx,cy,w,h)"),
    out: Path = typer.Option(..., help="output folder for cone_detector.onnx/.json/.pt and logs"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    epochs: int = typer.Option(40),
    size: int = typer.Option(448, help="input side (multiple of 32)"),
    batch_size: int = typer.Option(32),
    lr: float = typer.Option(2e-3),
    workers: int = typer.Option(0, help="DataLoader workers"),
    weights: Path | None = typer.Option(None, help="ImageNet Lite0 state dict (default: the weights package)"),
    max_steps: int = typer.Option(0, help="stop after this many steps (smoke runs; 0 = no limit)"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="evaluate on dev after training"),
    max_seconds: float = typer.Option(0.0, help="stop training after this many seconds (0 = no limit)"),
    exclude_source: list[str] = typer.Option([], help="leave this source out (repeatable; leave-one-source-out)"),
    scene_source: list[str] = typer.Option([], help="paste cones into this source's negatives (repeatable; "
                                                        "default CamVid)"),
) -> None:
    """Train the cone detector on train + extra-train, export ONNX, and evaluate on dev."""
    from workzone_train.detector_loop import train_detector

    result = train_detector(manifest, boxes, out, seed=seed, device=device, epochs=epochs, size=size,
                            batch_size=batch_size, lr=lr, workers=workers,
                            weights=str(weights) if weights else None, max_steps=max_steps,
                            evaluate=evaluate, max_seconds=max_seconds, exclude_sources=exclude_source,
                            scene_sources=scene_source or None)
    typer.echo(json.dumps(result, indent=2))


def eval_detector_cmd(
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False),
    boxes: Path = typer.Option(..., exists=True, dir_okay=False),
    model: Path = typer.Option(StageContext().resolve("builtin:cone_detector.onnx"), exists=True),
    split: str = typer.Option("dev"),
    seed: int = typer.Option(0, help="seed of the synthetic pastes"),
    threads: int = typer.Option(0),
    json_out: Path | None = typer.Option(None, help="also write the report here"),
) -> None:
    """Box AP@0.5 on held-out boxed images and pasted scenes, and image-level rates per source."""
    from workzone.stages.roadwork_detector import ObjectDetectorRunner
    from workzone_train.detector_eval import evaluate_detector

    runner = ObjectDetectorRunner(model, threads=threads)
    report = evaluate_detector(lambda ims: runner.detect(ims), manifest, boxes, split=split, seed=seed,
                               threshold=runner.score_threshold)
    text = json.dumps(report, indent=2)
    if json_out:
        atomic_write_text(json_out, text + "\n")
    typer.echo(text)
