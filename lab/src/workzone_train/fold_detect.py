"""Re-score a detector LOSO run's held-out images through the runtime's own detector path, at any input size.

A LOSO run (``workzone train objects-loso``, GPU) writes each fold's held-out detections at the size it
trained at. A cascade that first glances at an image with the same detector at a smaller input (cheaper:
the cost grows with the input's area) needs that glance's out-of-fold detections too. They take no GPU: each
fold's weights (``fold_states.pt``) are exported to ONNX at the new size and run through
:class:`workzone.stages.roadwork_detector.ObjectDetectorRunner`, the class the ``roadwork_detector`` stage
runs, with the shipped sidecar's as-trained treatment, on the original images. So the scores are those the
stage would give, not a training-time approximation of them.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from workzone_train._deps import require

__all__ = ["fold_detections_at", "tile_windows", "union_detections"]


def tile_windows(width: int, height: int, grid: int, overlap: float = 0.2) -> list[tuple[int, int, int, int]]:
    """``grid`` x ``grid`` windows ``(x0, y0, x1, y1)`` that cover the image, neighbours sharing ``overlap`` of a
    window, so an object cut by one window's edge is whole in the next (grid 1: the whole image).

    >>> tile_windows(1000, 500, 2)
    [(0, 0, 556, 278), (444, 0, 1000, 278), (0, 222, 556, 500), (444, 222, 1000, 500)]
    """
    if grid < 1 or not 0.0 <= overlap < 1.0:
        raise ValueError(f"grid {grid} must be >= 1 and overlap {overlap} in [0, 1)")
    fw = 1.0 / (grid - (grid - 1) * overlap)  # each window's share of a side
    step = fw * (1.0 - overlap)
    cuts = [(round(i * step * width), round(min(1.0, i * step + fw) * width)) for i in range(grid)]
    rows = [(round(i * step * height), round(min(1.0, i * step + fw) * height)) for i in range(grid)]
    return [(x0, y0, x1, y1) for y0, y1 in rows for x0, x1 in cuts]


def _normalised(det: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel boxes -> the packed format's boxes, normalised to the image on each axis."""
    out = det.astype(np.float64).copy()
    out[:, [0, 2]] /= max(width, 1)
    out[:, [1, 3]] /= max(height, 1)
    return np.round(out, 4)


def fold_detections_at(root: str | Path, fold_states: str | Path, *, size: int, out: str | Path,
                       folds: Mapping[str, Sequence[str]], sidecar: Mapping | None = None, tiles: int = 1,
                       progress: Callable[[int], None] | None = None) -> Path:
    """Held-out detections of every fold at input ``size``, in the packed ``oof_detections.json.gz`` format.

    Args:
        root: the data folder (``../shared/data``).
        fold_states: a LOSO run's ``fold_states.pt`` (fold name -> float16 state dict).
        size: the detector's input size (a multiple of 32).
        out: the ``.json.gz`` to write.
        folds: fold name -> the sources it leaves out (:data:`workzone_train.object_train.LOSO_FOLDS`).
        sidecar: the shipped detector's sidecar (its as-trained treatment and class names are kept).
        tiles: with N > 1, the detector looks at each of N x N overlapping windows (:func:`tile_windows`) instead
            of the whole image, each given the as-trained treatment on its own: N times the detail per object,
            for the question whether proposals at full resolution reach what the whole-image pass misses.
            Boxes come back in the whole image's coordinates, every window's (overlaps are not merged).
        progress: called with the number of images done after each.

    Raises:
        KeyError: ``fold_states`` lacks one of ``folds``.
    """
    torch = require("torch", "exporting the fold detectors")
    from workzone.io.images import decode_image
    from workzone.object_evidence import DETECTION_FLOOR, MAX_DETECTIONS
    from workzone.stages.roadwork_detector import ObjectDetectorRunner
    from workzone_train.corpus import load_corpus
    from workzone_train.detector import build_detector
    from workzone_train.detector_loop import export_onnx
    from workzone_train.scene_synth import OBJECT_CLASSES

    states = torch.load(fold_states, map_location="cpu", weights_only=True)
    missing = [f for f in folds if f not in states]
    if missing:
        raise KeyError(f"{fold_states} has no weights for fold(s) {missing}; it holds {sorted(states)}")
    meta = dict(sidecar or {})
    meta.pop("decision", None)  # the glance's decision is fitted on these detections, not the shipped size's
    meta["input_size"] = size
    class_names = list(meta.get("class_names") or OBJECT_CLASSES)
    meta["class_names"] = class_names
    corpus = load_corpus(root)
    packed: dict[str, dict] = {}
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        for fold, sources in folds.items():
            state = {k: v.float() for k, v in states[fold].items()}
            model = build_detector(pretrained=False, num_classes=len(class_names))
            model.load_state_dict(state)
            model.eval()
            path = Path(tmp) / f"{fold}.onnx"
            export_onnx(model, path, size)
            path.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
            runner = ObjectDetectorRunner(path)
            rows = {}
            try:
                for sample in (s for s in corpus if s.source in sources):
                    im = decode_image(sample.path.read_bytes())
                    det = _detect_tiled(runner, im, tiles, DETECTION_FLOOR, MAX_DETECTIONS)
                    rows[sample.key] = _normalised(det, im.width, im.height).tolist()
                    done += 1
                    if progress is not None:
                        progress(done)
            finally:
                runner.close()
            packed[fold] = {"fold": fold, "summary": {"input_size": size, "tiles": tiles,
                                                      "rescored_from": str(fold_states)},
                            "detections": rows}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    with gzip.open(part, "wt", encoding="utf-8") as fh:
        json.dump(packed, fh)
    part.replace(out)
    return out


def _detect_tiled(runner, im, grid: int, floor: float, top: int) -> np.ndarray:  # noqa: ANN001
    """The runner's detections of ``im`` (pixel boxes), over ``grid`` x ``grid`` windows when ``grid`` > 1."""
    if grid <= 1:
        return runner.detect([im], score_threshold=floor, max_detections=top)[0]
    wins = tile_windows(im.width, im.height, grid)
    crops = [np.ascontiguousarray(im.pixels[y0:y1, x0:x1]) for x0, y0, x1, y1 in wins]
    parts = []
    for (x0, y0, _, _), det in zip(wins, runner.detect(crops, score_threshold=floor, max_detections=top)):
        det = np.asarray(det, np.float64).reshape(-1, 6).copy()
        det[:, [0, 2]] += x0
        det[:, [1, 3]] += y0
        parts.append(det)
    return np.concatenate(parts) if parts else np.zeros((0, 6))


def union_detections(first: np.ndarray, second: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """One image's (D, 6) detections of two passes as one list, by falling score: every box of ``first``, and
    those of ``second`` that overlap no box of the same class in ``first`` by ``iou`` or more (the same object
    seen twice is kept once, as the first pass saw it)."""
    from workzone_train.detector import box_iou

    a, b = np.asarray(first, np.float64).reshape(-1, 6), np.asarray(second, np.float64).reshape(-1, 6)
    if len(a) and len(b):
        same = (box_iou(a[:, :4], b[:, :4]) >= iou) & (a[:, None, 5] == b[None, :, 5])
        b = b[~same.any(axis=0)]
    rows = np.concatenate([a, b])
    return rows[np.argsort(-rows[:, 4], kind="stable")]
