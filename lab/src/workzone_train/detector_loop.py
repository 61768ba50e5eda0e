"""Training the object detectors: the loop and the ONNX export with a parity check (:func:`fit_detector`,
:func:`export_onnx`, shared with :mod:`workzone_train.object_train`, which trains the shipped ten-class
``roadwork_objects.onnx``), and the superseded one-class cone detector's whole run (:func:`train_detector`: loop,
export, sidecar; its recipe and evaluation protocol are in ``workzone/models/CONE_DETECTOR_CARD.md``, its command
``workzone train detector``). Heavy imports (torch, onnxruntime) happen inside the functions.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from workzone_train.detector_eval import evaluate_detector
from workzone.io.atomic import atomic_write_text

__all__ = ["train_detector", "fit_detector", "export_onnx"]


def fit_detector(model: Any, ds: Any, loader: Any, *, device: str, lr: float, epochs: int, max_steps: int = 0,
                 max_seconds: float = 0.0, augment: Callable[[Any], Any] | None = None,
                 on_epoch: Callable[[dict[str, float]], None] | None = None,
                 checkpoint: Path | None = None, checkpoint_every_s: float = 60.0) -> tuple[list[dict[str, float]], int]:
    """The detector's training loop: AdamW, warm-up then cosine over steps or wall time, bf16 on CUDA.

    Args:
        model: a detector of :func:`workzone_train.detector.build_detector`, on ``device``.
        ds: the dataset (``set_epoch`` is called each epoch, so draws differ by epoch).
        loader: its DataLoader, yielding (image, heat, reg, mask).
        augment: applied to each image batch on the device before the forward pass.
        on_epoch: called with each epoch's record.
        checkpoint: a file to resume from (when it exists) and to save to (model, optimiser, step, epoch and
            the seconds spent) every ``checkpoint_every_s`` and at the end, atomically. A run cut off (a GPU
            lease ends) resumes where the file left it, with the budget it had left; the epoch it was in
            starts again, with the same draws.

    Returns:
        One record per epoch (steps, seconds, mean loss parts) and the steps taken.
    """
    import torch

    from workzone_train.detector import detection_loss

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * len(loader))
    if max_steps:
        steps = min(steps, max_steps)
    amp = device.startswith("cuda")
    log: list[dict[str, float]] = []
    step, t0, first_epoch = 0, time.time(), 0
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, first_epoch, log = int(state["step"]), int(state["epoch"]), list(state["log"])
        t0 = time.time() - float(state["seconds"])
    last_save = time.time()

    def save(epoch: int) -> None:
        nonlocal last_save
        if checkpoint is None:
            return
        from workzone.io.atomic import atomic_path

        with atomic_path(Path(checkpoint)) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                        "seconds": time.time() - t0, "log": log}, tmp)
        last_save = time.time()

    def out_of_budget() -> bool:
        return step >= steps or bool(max_seconds and time.time() - t0 > max_seconds)

    if out_of_budget():
        return log, step
    for epoch in range(first_epoch, epochs):
        ds.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = defaultdict(float)
        n = 0
        for x, heat, reg, mask in loader:
            x, heat, reg, mask = (t.to(device, non_blocking=True) for t in (x, heat, reg, mask))
            if augment is not None:
                x = augment(x)
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
            if time.time() - last_save > checkpoint_every_s:
                save(epoch)
            if out_of_budget():
                break
        log.append({"epoch": epoch, "steps": step, "seconds": round(time.time() - t0, 1),
                    **{k: round(v / max(n, 1), 4) for k, v in sums.items()}})
        if on_epoch is not None:
            on_epoch(log[-1])
        save(epoch + 1)
        if out_of_budget():
            break
    return log, step


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
    from workzone_train._deps import require
    from workzone_train.detector import CLASS_NAMES, STRIDE, build_detector, detection_loss
    from workzone_train.detector_data import DetectionSet, cutouts_from_items, load_det_items

    torch = require("torch", "training the cone detector")
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = True
    out.mkdir(parents=True, exist_ok=True)
    from workzone_train.detector_data import SCENE_SOURCES

    items = load_det_items(manifest, boxes, ["train", "extra-train"], exclude_sources=exclude_sources,
                           scene_sources=SCENE_SOURCES if scene_sources is None else scene_sources)
    cutouts = cutouts_from_items([it for it in items if not it.scene])
    ds = DetectionSet(items, cutouts, size=size, seed=seed)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
        generator=torch.Generator().manual_seed(seed), pin_memory=device.startswith("cuda"))
    model = build_detector(weights_path=weights).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    log, step = fit_detector(model, ds, loader, device=device, lr=lr, epochs=epochs, max_steps=max_steps,
                             max_seconds=max_seconds, on_epoch=lambda rec: print(json.dumps(rec), flush=True))
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
        from workzone.stages.roadwork_detector import ObjectDetectorRunner

        runner = ObjectDetectorRunner(onnx_path)
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
    """Export with dynamic batch and spatial axes and check onnxruntime agrees with torch.

    Spatial axes are dynamic so that one file also serves a cheaper look at a smaller input (the
    ``roadwork_detector`` stage's ``input_size``, with a decision fitted at that size); ``size`` is the
    size it was trained at.
    """
    import torch

    dummy = torch.rand(2, 3, size, size)
    kwargs = dict(input_names=["image"], output_names=["out"], opset_version=17,
                  dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "out": {0: "n", 2: "gh", 3: "gw"}})
    try:
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, **kwargs)
    except TypeError:  # older torch without the dynamo switch
        torch.onnx.export(model, (dummy,), str(path), **kwargs)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for side in (size, max(32, size * 2 // 3 // 32 * 32)):  # the trained size and a smaller one
        x = dummy if side == size else torch.rand(2, 3, side, side)
        got = sess.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        err = export_error(got, want)
        if err > 1e-2:
            raise RuntimeError(f"ONNX export of the detector disagrees with torch at {side} px (error {err:.4f}: "
                               "absolute below 1, relative above)")


def export_error(got: np.ndarray, want: np.ndarray) -> float:
    """The largest difference of two detector outputs, absolute where the value is below 1 (probabilities, offsets
    in cells) and relative above (box sizes in input pixels: a float32 graph's 0.01 on a 300-px box is no error; a
    model trained longer, with larger sizes, failed an absolute 1e-2 at 224 px with 0.0112).

    Examples:
        >>> export_error(np.array([0.5, 300.0]), np.array([0.5, 300.03]))
        0.0001
        >>> round(export_error(np.array([0.52, 300.0]), np.array([0.5, 300.0])), 3)
        0.02
    """
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    return float((diff / np.maximum(1.0, np.abs(want))).max().round(6))
