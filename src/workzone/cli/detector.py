"""``workzone train-detector`` and ``workzone eval-detector``: the embedded cone detector.

Training recipe and evaluation protocol are in ``workzone/models/CONE_DETECTOR_CARD.md``. Heavy
imports (torch, onnxruntime) happen inside the commands.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import typer

from workzone.io.atomic import atomic_write_text

__all__ = ["register", "evaluate_detector", "train_detector"]

DetectFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def register(app: typer.Typer) -> None:
    """Add ``train-detector`` and ``eval-detector`` to ``app``."""
    app.command("train-detector")(train_detector_cmd)
    app.command("eval-detector")(eval_detector_cmd)


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
    result = train_detector(manifest, boxes, out, seed=seed, device=device, epochs=epochs, size=size,
                            batch_size=batch_size, lr=lr, workers=workers,
                            weights=str(weights) if weights else None, max_steps=max_steps,
                            evaluate=evaluate, max_seconds=max_seconds, exclude_sources=exclude_source,
                            scene_sources=scene_source or None)
    typer.echo(json.dumps(result, indent=2))


def eval_detector_cmd(
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False),
    boxes: Path = typer.Option(..., exists=True, dir_okay=False),
    model: Path = typer.Option(Path(__file__).resolve().parents[1] / "models" / "cone_detector.onnx", exists=True),
    split: str = typer.Option("dev"),
    seed: int = typer.Option(0, help="seed of the synthetic pastes"),
    threads: int = typer.Option(0),
    json_out: Path | None = typer.Option(None, help="also write the report here"),
) -> None:
    """Box AP@0.5 on held-out boxed images and pasted scenes, and image-level rates per source."""
    from workzone.stages.roadwork_detector import ConeDetectorRunner

    runner = ConeDetectorRunner(model, threads=threads)
    report = evaluate_detector(lambda ims: runner.detect(ims), manifest, boxes, split=split, seed=seed,
                               threshold=runner.score_threshold)
    text = json.dumps(report, indent=2)
    if json_out:
        atomic_write_text(json_out, text + "\n")
    typer.echo(text)


def train_detector(manifest: Path, boxes: Path, out: Path, *, seed: int = 0, device: str = "cpu", epochs: int = 40,
                   size: int = 448, batch_size: int = 32, lr: float = 2e-3, workers: int = 0,
                   weights: str | None = None, max_steps: int = 0, score_threshold: float = 0.3,
                   evaluate: bool = True, max_seconds: float = 0.0, exclude_sources: Sequence[str] = (),
                   scene_sources: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, export ``cone_detector.onnx`` + sidecar + state dict to ``out``, evaluate on dev.

    ``exclude_sources`` leaves sources out (leave-one-source-out); ``scene_sources`` overrides
    which sources' negatives get pasted cones (default: CamVid).

    Returns:
        The training log and the dev report.
    """
    from workzone._optional import require
    from workzone.training.detector import CLASS_NAMES, STRIDE, build_detector, detection_loss
    from workzone.training.detector_data import DetectionSet, cutouts_from_items, load_det_items

    torch = require("torch", "train", "training the cone detector")
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = True
    out.mkdir(parents=True, exist_ok=True)
    from workzone.training.detector_data import SCENE_SOURCES

    items = load_det_items(manifest, boxes, ["train", "extra-train"], exclude_sources=exclude_sources,
                           scene_sources=SCENE_SOURCES if scene_sources is None else scene_sources)
    cutouts = cutouts_from_items([it for it in items if not it.scene])
    ds = DetectionSet(items, cutouts, size=size, seed=seed)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
        generator=torch.Generator().manual_seed(seed), pin_memory=device.startswith("cuda"))
    model = build_detector(weights_path=weights).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * len(loader))
    if max_steps:
        steps = min(steps, max_steps)
    amp = device.startswith("cuda")
    log: list[dict[str, float]] = []
    step, t0 = 0, time.time()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = defaultdict(float)
        n = 0
        for x, heat, reg, mask in loader:
            x, heat, reg, mask = (t.to(device, non_blocking=True) for t in (x, heat, reg, mask))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                heat_logits, reg_pred = model.forward_train(x)
            loss, parts = detection_loss(heat_logits, reg_pred, heat, reg, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            # Warm-up then cosine over progress, which is steps or wall time, whichever is further,
            # so a run cut by max_seconds still ends annealed.
            progress = step / steps
            if max_seconds:
                progress = max(progress, (time.time() - t0) / max_seconds)
            for g in opt.param_groups:
                g["lr"] = _lr_at(progress, lr)
            opt.step()
            step += 1
            n += 1
            for k, v in parts.items():
                sums[k] += v
            if step >= steps or (max_seconds and time.time() - t0 > max_seconds):
                break
        log.append({"epoch": epoch, "steps": step, "seconds": round(time.time() - t0, 1),
                    **{k: round(v / max(n, 1), 4) for k, v in sums.items()}})
        print(json.dumps(log[-1]), flush=True)
        if step >= steps or (max_seconds and time.time() - t0 > max_seconds):
            break
    model = model.eval().float().cpu()
    torch.save(model.state_dict(), out / "cone_detector.pt")
    onnx_path = out / "cone_detector.onnx"
    export_onnx(model, onnx_path, size)
    sidecar = {
        "input_size": size, "stride": STRIDE, "resize": "letterbox", "input": "image", "output": "out",
        "layout": "out[N, K+4, S/8, S/8]: 0..K-1 peak-suppressed centre probabilities; K,K+1 centre offset "
                  "(dx, dy) in cells; K+2,K+3 box width, height in input pixels",
        "class_names": list(CLASS_NAMES), "score_threshold": score_threshold,
        "training": {"seed": seed, "epochs": epochs, "steps": step, "batch_size": batch_size, "lr": lr,
                     "images": len(items), "cutouts": len(cutouts), "excluded_sources": list(exclude_sources)},
    }
    atomic_write_text(out / "cone_detector.json", json.dumps(sidecar, indent=2) + "\n")
    result: dict[str, Any] = {"log": log}
    if evaluate:
        from workzone.stages.roadwork_detector import ConeDetectorRunner

        runner = ConeDetectorRunner(onnx_path)
        result["dev"] = evaluate_detector(lambda ims: runner.detect(ims), manifest, boxes, split="dev", seed=seed,
                                          threshold=score_threshold)
    atomic_write_text(out / "train_report.json", json.dumps(result, indent=2) + "\n")
    return result


def _lr_at(progress: float, peak: float, warmup: float = 0.05) -> float:
    if progress < warmup:
        return peak * (0.1 + 0.9 * progress / warmup)
    t = min(1.0, (progress - warmup) / (1 - warmup))
    return peak * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * t)))


def export_onnx(model: Any, path: Path, size: int) -> None:
    """Export with a dynamic batch axis and check onnxruntime agrees with torch."""
    import torch

    dummy = torch.rand(2, 3, size, size)
    kwargs = dict(input_names=["image"], output_names=["out"], opset_version=17,
                  dynamic_axes={"image": {0: "n"}, "out": {0: "n"}})
    try:
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, **kwargs)
    except TypeError:  # older torch without the dynamo switch
        torch.onnx.export(model, (dummy,), str(path), **kwargs)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": dummy.numpy()})[0]
    with torch.no_grad():
        want = model(dummy).numpy()
    err = float(np.abs(got - want).max())
    if err > 1e-2:
        raise RuntimeError(f"ONNX export of the cone detector disagrees with torch (max abs error {err:.4f})")


def evaluate_detector(detect: DetectFn, manifest: Path, boxes: Path, *, split: str = "dev", seed: int = 0,
                      threshold: float = 0.3, n_synthetic: int = 0) -> dict[str, Any]:
    """Box AP@0.5 on ``split``: real boxed images, and scenes with cones pasted from ``split`` cutouts.

    Also the image-level rate "top box >= threshold" per (source, label) over every image of the
    split (cones seen in road-work frames; false alarms on negatives).

    Args:
        detect: images -> per image (D, 6) ``x1, y1, x2, y2, score, class`` in pixels.
        manifest: manifest.csv.
        boxes: boxes.csv.
        split: the held-out split.
        seed: seed of the pastes (fixed, so every model sees the same synthetic set).
        threshold: image-level decision threshold on the top box score.
        n_synthetic: scenes used for the pasted set (0 = all).
    """
    from workzone.training.data import load_pixels, load_samples
    from workzone.training.detector import average_precision
    from workzone.training.detector_data import cutouts_from_items, load_det_items, paste_cones_with_boxes

    items = load_det_items(manifest, boxes, [split])
    boxed = [it for it in items if not it.scene]
    scenes = [it for it in items if it.scene][: n_synthetic or None]
    report: dict[str, Any] = {"split": split, "threshold": threshold}
    # Real boxed images (TraCon dev: cone photos and empty roads).
    px = [load_pixels(it.path) for it in boxed]
    dets = _batched(detect, px)
    truths = [it.boxes * np.array([p.shape[1], p.shape[0]] * 2, np.float32) for it, p in zip(boxed, px)]
    report["ap50_boxed"] = _round(average_precision(dets, truths))
    report["boxed_images"], report["boxed_cones"] = len(boxed), int(sum(len(t) for t in truths))
    # Pasted scenes: every other scene gets cones, the rest stay negative.
    cutouts = cutouts_from_items(boxed)
    if cutouts and scenes:
        rng = np.random.default_rng(seed)
        ims, tr = [], []
        for k, it in enumerate(scenes):
            p = load_pixels(it.path)
            if k % 2 == 0:
                p, b = paste_cones_with_boxes(p, cutouts, rng)
            else:
                b = np.zeros((0, 4), np.float32)
            ims.append(p)
            tr.append(b)
        report["ap50_pasted_scenes"] = _round(average_precision(_batched(detect, ims), tr))
        report["pasted_scenes"], report["pasted_cones"] = len(ims), int(sum(len(t) for t in tr))
    # Image level over every image of the split.
    rates: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    samples = load_samples(manifest, splits=[split])
    tops = _top_scores(detect, [s.path for s in samples])
    for s, top in zip(samples, tops):
        key = f"{s.source}/label{s.label}"
        rates[key][0] += int(top >= threshold)
        rates[key][1] += 1
    report["image_rate_top_ge_threshold"] = {k: {"fired": a, "images": n, "rate": _round(a / n)} for k, (a, n) in sorted(rates.items())}
    return report


def _batched(detect: DetectFn, images: list[np.ndarray], bs: int = 16) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for i in range(0, len(images), bs):
        out.extend(detect(images[i:i + bs]))
    return out


def _top_scores(detect: DetectFn, paths: list[Path], bs: int = 16) -> list[float]:
    from workzone.training.data import load_pixels

    tops: list[float] = []
    for i in range(0, len(paths), bs):
        for d in detect([load_pixels(p) for p in paths[i:i + bs]]):
            tops.append(float(d[0, 4]) if len(d) else 0.0)
    return tops


def _round(v: float) -> float:
    return round(float(v), 4)


if __name__ == "__main__":  # lets the GPU machine run it without the full app wired in
    _app = typer.Typer(add_completion=False)
    register(_app)
    _app()
