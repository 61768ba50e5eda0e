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

__all__ = ["fold_detections_at"]


def _normalised(det: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel boxes -> the packed format's boxes, normalised to the image on each axis."""
    out = det.astype(np.float64).copy()
    out[:, [0, 2]] /= max(width, 1)
    out[:, [1, 3]] /= max(height, 1)
    return np.round(out, 4)


def fold_detections_at(root: str | Path, fold_states: str | Path, *, size: int, out: str | Path,
                       folds: Mapping[str, Sequence[str]], sidecar: Mapping | None = None,
                       progress: Callable[[int], None] | None = None) -> Path:
    """Held-out detections of every fold at input ``size``, in the packed ``oof_detections.json.gz`` format.

    Args:
        root: the data folder (``../shared/data``).
        fold_states: a LOSO run's ``fold_states.pt`` (fold name -> float16 state dict).
        size: the detector's input size (a multiple of 32).
        out: the ``.json.gz`` to write.
        folds: fold name -> the sources it leaves out (:data:`workzone_train.object_train.LOSO_FOLDS`).
        sidecar: the shipped detector's sidecar (its as-trained treatment and class names are kept).
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
                    det = runner.detect([im], score_threshold=DETECTION_FLOOR, max_detections=MAX_DETECTIONS)[0]
                    rows[sample.key] = _normalised(det, im.width, im.height).tolist()
                    done += 1
                    if progress is not None:
                        progress(done)
            finally:
                runner.close()
            packed[fold] = {"fold": fold, "summary": {"input_size": size, "rescored_from": str(fold_states)},
                            "detections": rows}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    with gzip.open(part, "wt", encoding="utf-8") as fh:
        json.dump(packed, fh)
    part.replace(out)
    return out
