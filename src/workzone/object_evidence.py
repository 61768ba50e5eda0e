"""From detected work-zone objects to one log-odds: the detector's image-level decision.

Why a learned decision and not the top box: one cone-like box at 0.4 means little, three drums in
a row at 0.3 mean a lane closure, a person alone is usually a pedestrian. A logistic regression
over a few per-class summaries, fitted on **out-of-fold** detections (each image scored by a
detector that never saw its source), learns how much each kind of object is worth on cameras the
detector never saw. Its weights live in the detector's JSON sidecar (``decision``), next to the
weights they were fitted for.

Features per image (all bounded, so a garbage box cannot dominate), for each class ``c``:
``logit(max score of c)`` clipped to [-6, 6] and ``log1p(boxes of c scoring >= 0.3)``; then the
same two over all classes, and the height of the tallest box >= 0.3 as a fraction of the image.
A look-alike class (``sign_other``: a traffic sign that is not the road-work sign, which the detector learns
so as to tell the two apart) never counts in the class-blind summaries: it is not evidence of road work.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["FEATURE_VERSION", "DETECTION_FLOOR", "MAX_DETECTIONS", "COUNT_AT", "LOGIT_CLIP", "LOOKALIKE_CLASSES",
           "clipped_logit", "feature_names", "object_features", "lookalike_indices", "LinearDecision", "ObjectDecision"]

FEATURE_VERSION = 1
# Detections below this score, or past this many, are not summarised: the decision is fitted on
# detections taken exactly so (training.object_train.detect_paths), and the runtime must match.
DETECTION_FLOOR = 0.01
MAX_DETECTIONS = 50
_COUNT_AT = 0.3
#: Detector classes that are look-alikes of work-zone objects, never evidence.
LOOKALIKE_CLASSES: tuple[str, ...] = ("sign_other",)
_LOGIT_CLIP = 6.0
# Public names of the two for the device path (accel/objects.py), which computes the same features.
COUNT_AT, LOGIT_CLIP = _COUNT_AT, _LOGIT_CLIP


def clipped_logit(p: np.ndarray | float, clip: float = _LOGIT_CLIP) -> np.ndarray:
    """Log-odds of ``p`` (taken in [0.001, 0.999]) clipped to ±``clip`` (default LOGIT_CLIP): bounded, so no box
    dominates."""
    p = np.clip(np.asarray(p, np.float64), 1e-3, 1 - 1e-3)
    return np.clip(np.log(p / (1 - p)), -clip, clip)


def feature_names(class_names: Sequence[str]) -> list[str]:
    """Names of :func:`object_features`' columns, in order."""
    names = []
    for c in class_names:
        names += [f"max_{c}", f"count_{c}"]
    return names + ["max_any", "count_any", "tallest"]


def lookalike_indices(class_names: Sequence[str]) -> tuple[int, ...]:
    """Indices of the look-alike classes among a detector's classes."""
    return tuple(i for i, c in enumerate(class_names) if c in LOOKALIKE_CLASSES)


def object_features(det: np.ndarray, num_classes: int, image_height: float = 1.0,
                    lookalikes: Sequence[int] = ()) -> np.ndarray:
    """Features of one image's detections.

    Args:
        det: (D, 6) rows ``x1, y1, x2, y2, score, class`` (any coordinates; ``image_height`` in the same).
        num_classes: K.
        image_height: height of the image in ``det``'s coordinates.
        lookalikes: class indices left out of the class-blind summaries (:func:`lookalike_indices`).

    Returns:
        (2 K + 3,) float64, columns as :func:`feature_names`.

    Examples:
        >>> f = object_features(np.array([[0, 0, 1, 2, 0.9, 1]]), 2, 4.0)
        >>> [round(float(v), 2) for v in f]
        [-6.0, 0.0, 2.2, 0.69, 2.2, 0.69, 0.5]
    """
    det = np.asarray(det, np.float64).reshape(-1, 6)
    out = np.empty(2 * num_classes + 3)
    scores, cls = det[:, 4], det[:, 5].astype(int)
    for c in range(num_classes):
        s = scores[cls == c]
        out[2 * c] = clipped_logit(s.max() if len(s) else 0.0)
        out[2 * c + 1] = math.log1p(int((s >= _COUNT_AT).sum()))
    evidence = ~np.isin(cls, np.asarray(lookalikes, int))
    det, scores = det[evidence], scores[evidence]
    out[2 * num_classes] = clipped_logit(scores.max() if len(scores) else 0.0)
    strong = det[scores >= _COUNT_AT]
    out[2 * num_classes + 1] = math.log1p(len(strong))
    out[2 * num_classes + 2] = float((strong[:, 3] - strong[:, 1]).max() / max(image_height, 1e-9)) if len(strong) else 0.0
    return out


class LinearDecision:
    """A fitted logistic regression over named columns of a feature layout (a sidecar's ``decision`` block).

    One place for what every decision block is: which of the layout's features it uses, its bias and weights,
    the check that it was fitted for this layout, and the "decided by" parts. :class:`ObjectDecision` (over
    detections) and ``workzone.verified_evidence.VerifiedDecision`` (over verified candidates) are its two kinds.

    Args:
        spec: ``{"version": V, "features": [names used], "bias": b, "weights": [one per name], ...}``.
        known: the layout's feature names, in column order.
        version: the layout's version.

    Raises:
        ValueError: the spec does not match this feature layout.
    """

    def __init__(self, spec: Mapping[str, Any], known: Sequence[str], version: int) -> None:
        used = list(spec.get("features", []))
        if int(spec.get("version", 0)) != version or not used or set(used) - set(known):
            raise ValueError(f"decision block was fitted for other features (version {spec.get('version')}, "
                             f"features {used}); expected version {version} with names from {list(known)}")
        self.columns = np.array([list(known).index(n) for n in used])
        self.bias = float(spec["bias"])
        self.weights = np.asarray(spec["weights"], np.float64)
        if self.weights.shape != (len(used),) or not np.isfinite(self.weights).all() or not math.isfinite(self.bias):
            raise ValueError(f"decision weights: expected {len(used)} finite numbers")
        self.feature_names = used

    def score(self, features: np.ndarray) -> float:
        """Log-odds from a full feature row of the layout."""
        return float(self.bias + self.weights @ np.asarray(features)[self.columns])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Log-odds of many full feature rows (N, F) at once: (N,)."""
        return self.bias + np.asarray(features)[:, self.columns] @ self.weights

    def parts_of_rows(self, features: np.ndarray, top: int = 3) -> list[list[tuple[str, float]]]:
        """:meth:`parts` of many rows (N, F) at once."""
        parts = np.asarray(features)[:, self.columns] * self.weights
        order = np.argsort(-np.abs(parts), axis=1, kind="stable")[:, :top]
        picked = np.take_along_axis(parts, order, axis=1).tolist()
        names = self.feature_names
        return [[(names[i], v) for i, v in zip(o, vals)] for o, vals in zip(order.tolist(), picked)]

    def parts(self, features: np.ndarray, top: int = 3) -> list[tuple[str, float]]:
        """The features that pushed this decision most, as (name, weight x value), largest first."""
        parts = self.weights * np.asarray(features)[self.columns]
        order = np.argsort(-np.abs(parts), kind="stable")[:top]
        return [(self.feature_names[i], float(parts[i])) for i in order]


class ObjectDecision(LinearDecision):
    """A fitted logistic regression over some of :func:`object_features` (from the sidecar's ``decision``).

    Args:
        spec: ``{"version": 1, "features": [names used], "bias": b, "weights": [one per name], ...}``.
        class_names: the detector's classes, which fix the feature layout.

    Raises:
        ValueError: the spec does not match this feature layout.
    """

    def __init__(self, spec: Mapping[str, Any], class_names: Sequence[str]) -> None:
        super().__init__(spec, feature_names(class_names), FEATURE_VERSION)
        self.num_classes = len(class_names)
        self.lookalikes = lookalike_indices(class_names)

    def _layout(self, det: np.ndarray, image_height: float) -> np.ndarray:
        return object_features(det, self.num_classes, image_height, self.lookalikes)

    def log_odds(self, det: np.ndarray, image_height: float) -> float:
        """The image's road-work log-odds from its detections."""
        return self.score(self._layout(det, image_height))

    def contributions(self, det: np.ndarray, image_height: float, top: int = 3) -> list[tuple[str, float]]:
        """The features that pushed this decision most, as (name, weight x value), largest first."""
        return self.parts(self._layout(det, image_height), top)
