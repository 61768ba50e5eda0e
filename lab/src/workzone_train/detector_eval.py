"""Evaluating the embedded cone detector: box AP@0.5 on held-out boxed images and pasted scenes,
and image-level rates per source (``workzone train eval-detector``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["DetectFn", "evaluate_detector"]

DetectFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


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
    from workzone_train.data import load_pixels, load_samples
    from workzone_train.detector import average_precision
    from workzone_train.detector_data import cutouts_from_items, load_det_items, paste_cones_with_boxes

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
    from workzone_train.data import load_pixels

    tops: list[float] = []
    for i in range(0, len(paths), bs):
        for d in detect([load_pixels(p) for p in paths[i:i + bs]]):
            tops.append(float(d[0, 4]) if len(d) else 0.0)
    return tops


def _round(v: float) -> float:
    return round(float(v), 4)

