"""From candidate boxes and the verifier's answers to one log-odds: the verified decision.

Why a second decision: the detector sees each image as a 320-px JPEG copy, where a tail light in rain, a
red kerb post and a level-crossing triangle look like a cone or a road-work sign. The verifier looks again
at each candidate in the image's own resolution (:func:`candidate_crops`) and answers which work-zone object
it is, a look-alike sign (``sign_other``) or ``none``. This decision weighs what the detector proposed
against what the verifier confirmed, by class: a verified road-work sign is evidence, a warning triangle is
not; several verified cones are stronger than one. Its weights are fitted on out-of-fold candidates (each
image's candidates proposed by a detector, and judged by a verifier, that never saw its source) and live in
the verifier's JSON sidecar (``decision``).

Candidates: the detector's boxes scoring at least ``candidate_floor``, best first, at most ``max_candidates``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from workzone.accel.crops import MIN_WINDOW, crop_windows
from workzone.object_evidence import LinearDecision, clipped_logit

__all__ = ["VERIFIED_FEATURE_VERSION", "VERIFIED_LOGIT_CLIP", "NONE_CLASSES", "GROUPS", "candidate_crops",
           "window_side", "MIN_WINDOW", "select_candidates", "object_probability", "verified_features_batch",
           "verified_feature_names", "verified_features", "VerifiedDecision"]

# Version 2: the verifier's and the detector's maxima clipped at ±3 instead of ±6. A confident answer's logit is
# steep (P 0.99 -> 0.999 moves it 4.6 -> 6.9), so a quarter-pixel move of a box could move the decision; at ±3
# (P 0.047 to 0.953) the pooled out-of-fold MCC rose in both seeds of the verifier's folds
# (benchmarks/results/verified_steepness.md).
VERIFIED_FEATURE_VERSION = 2
VERIFIED_LOGIT_CLIP = 3.0
#: Verifier answers that are not work-zone objects.
NONE_CLASSES: tuple[str, ...] = ("none", "sign_other")
#: Class groups of the class-aware features: what a work zone is built from.
GROUPS: dict[str, tuple[str, ...]] = {
    "channelizer": ("cone", "drum", "post"),
    "closure": ("barricade", "barrier", "arrow_board"),
    "sign": ("sign",),
    "people": ("worker", "machine"),
}
_VERIFIED_AT = 0.5


def window_side(box: Sequence[float], *, context: float, min_side: float = MIN_WINDOW) -> float:
    """The side, in image pixels, of the square window :func:`candidate_crops` cuts around ``box`` (x1, y1, x2, y2):
    ``context`` times its longer side, at least ``min_side``. It is how much detail the crop holds once resized."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return max(min_side, context * max(x2 - x1, y2 - y1))


def candidate_crops(pixels: np.ndarray, boxes: np.ndarray, *, size: int, context: float, min_side: float = MIN_WINDOW,
                    max_side: int | None = None) -> np.ndarray:
    """Square crops around boxes, at the image's own resolution, resized to ``size``.

    Each crop is centred on its box, its side ``context`` times the box's longer side (at least ``min_side``
    pixels), so the verifier sees the object and what stands around it (the car around a tail light, the
    post under a sign). Parts outside the image are black. Bilinear resampling (area-averaging when
    shrinking), the same in training and at run time.

    Args:
        pixels: uint8 RGB (H, W, 3), the decoded image.
        boxes: (N, 4) x1, y1, x2, y2 in its pixels.
        size: side of each crop in the output.
        context: crop side over the box's longer side.
        min_side: smallest crop side in image pixels.
        max_side: the longest image side the verifier was trained at: a larger image's crops first pass through
            the size they would have there, so they hold the detail the verifier learnt from (training images
            were at most 640 px), not more. ``None`` keeps every pixel.

    Returns:
        (N, 3, size, size) float32 in [0, 1].

    Examples:
        >>> px = np.zeros((40, 60, 3), np.uint8); px[10:20, 20:30] = 255
        >>> c = candidate_crops(px, np.array([[20, 10, 30, 20]]), size=8, context=1.0)
        >>> c.shape, float(c[0, :, 2:6, 2:6].mean())
        ((1, 3, 8, 8), 1.0)
    """
    from PIL import Image as PILImage

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    out = np.zeros((len(boxes), 3, size, size), np.float32)
    if not len(boxes):
        return out
    h, w = pixels.shape[:2]
    # The window arithmetic is shared with the device path (workzone.accel.crops.crops_like_pillow).
    win = crop_windows(boxes, np.full(len(boxes), h), np.full(len(boxes), w), context=context, min_side=min_side,
                       max_side=max_side)
    im = PILImage.fromarray(np.ascontiguousarray(pixels))
    for i, (left, top, side, seen) in enumerate(zip(win.left.tolist(), win.top.tolist(), win.side.tolist(),
                                                    win.seen.tolist())):
        crop = im.crop((left, top, left + side, top + side))  # zero-filled beyond the image
        if seen != side:
            crop = crop.resize((seen, seen), PILImage.BILINEAR)
        out[i] = np.asarray(crop.resize((size, size), PILImage.BILINEAR), np.float32).transpose(2, 0, 1) / 255.0
    return out


def select_candidates(det: np.ndarray, *, floor: float, most: int) -> np.ndarray:
    """The candidate rows of ``det`` (D, 6) ``x1, y1, x2, y2, score, class``: score >= floor, best ``most``."""
    det = np.asarray(det, np.float64).reshape(-1, 6)
    det = det[det[:, 4] >= floor]
    return det[np.argsort(-det[:, 4], kind="stable")][:most]


def verified_feature_names() -> list[str]:
    """Names of :func:`verified_features`' columns, in order."""
    names = ["det_max", "ver_max", "joint_max", "n_verified"]
    for g in GROUPS:
        names += [f"{g}_max", f"{g}_n"]
    return names


def verified_features(scores: np.ndarray, det_classes: Sequence[str], probs: np.ndarray,
                      verifier_classes: Sequence[str]) -> np.ndarray:
    """Features of one image's candidates.

    Args:
        scores: (N,) detector confidences of the candidates.
        det_classes: (N,) the detector's class names for them.
        probs: (N, C) the verifier's class probabilities.
        verifier_classes: the C class names of ``probs`` (work-zone classes, ``sign_other``, ``none``).

    Returns:
        Columns of :func:`verified_feature_names`: ``det_max`` logit of the best detector score among
        candidates the detector did not call a look-alike; ``ver_max`` logit of the best verifier P(work-zone
        object); ``joint_max`` logit of the best product of both; ``n_verified`` log1p of candidates with
        P(object) >= 0.5; per group, logit of the best verifier probability of that group and log1p of the
        verified candidates the verifier puts in it. Every logit is clipped to ±:data:`VERIFIED_LOGIT_CLIP`.

    Examples:
        >>> f = verified_features(np.array([0.8]), ["cone"], np.array([[0.9, 0.1]]), ["cone", "none"])
        >>> [round(float(v), 2) for v in f[:4]]
        [1.39, 2.2, 0.94, 0.69]
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    # One image is a batch of one: a single implementation for the lab's fits and the stage's batches.
    return verified_features_batch(scores, det_classes, probs, [len(scores)], verifier_classes)[0]


@lru_cache(maxsize=16)
def _group_members(verifier_classes: tuple[str, ...]) -> np.ndarray:
    """(C, G) float: 1 where verifier class c belongs to group g of :data:`GROUPS`."""
    out = np.zeros((len(verifier_classes), len(GROUPS)))
    for g, members in enumerate(GROUPS.values()):
        for c, name in enumerate(verifier_classes):
            out[c, g] = name in members
    out.setflags(write=False)
    return out


def verified_features_batch(scores: np.ndarray, det_classes: Sequence[str], probs: np.ndarray, counts: Sequence[int],
                            verifier_classes: Sequence[str]) -> np.ndarray:
    """:func:`verified_features` of many images at once: their candidates concatenated, ``counts[i]`` of image i.

    Returns:
        (N, F) float64, row i equal to ``verified_features`` of image i's candidates (to float rounding). A GPU batch
        verifies a thousand images at once; one pass of array operations instead of a thousand calls.

    Examples:
        >>> f = verified_features_batch(np.array([0.8, 0.3]), ["cone", "cone"], np.array([[0.9, 0.1], [0.2, 0.8]]),
        ...                             [1, 0, 1], ["cone", "none"])
        >>> [round(float(v), 2) for v in f[0, :4]], [round(float(v), 2) for v in f[1, :4]]
        ([1.39, 2.2, 0.94, 0.69], [-3.0, -3.0, -3.0, 0.0])
    """
    counts = np.asarray(counts, np.int64).reshape(-1)
    n, m = len(counts), int(counts.sum())
    scores = np.asarray(scores, np.float64).reshape(m)
    probs = np.asarray(probs, np.float64).reshape(m, len(verifier_classes))
    member = _group_members(tuple(verifier_classes))
    groups = member.shape[1]
    maxima = np.zeros((n, 3 + groups))
    many = np.zeros((n, 1 + groups))
    if m:
        owner = np.repeat(np.arange(n), counts)
        p_obj = object_probability(probs, verifier_classes)
        wz = np.fromiter((c not in NONE_CLASSES for c in det_classes), bool, m)
        verified = p_obj >= _VERIFIED_AT
        cols = np.column_stack([np.where(wz, scores, 0.0), p_obj, scores * p_obj, probs @ member])  # (M, 3 + G)
        # Each image's maxima over its candidates (zero where it has none, as the single-image form gives).
        np.maximum.at(maxima, owner, cols)
        np.add.at(many, owner, np.column_stack([verified, member[probs.argmax(1)] * verified[:, None]]))
    logits, counted = clipped_logit(maxima, VERIFIED_LOGIT_CLIP), np.log1p(many)
    out = np.empty((n, 4 + 2 * groups))
    out[:, :3], out[:, 3] = logits[:, :3], counted[:, 0]
    out[:, 4::2], out[:, 5::2] = logits[:, 3:], counted[:, 1:]
    return out


def object_probability(probs: np.ndarray, verifier_classes: Sequence[str]) -> np.ndarray:
    """(N,) the verifier's P(work-zone object) of each candidate: one minus its ``NONE_CLASSES`` probabilities."""
    none_cols = [i for i, c in enumerate(verifier_classes) if c in NONE_CLASSES]
    return 1.0 - probs[:, none_cols].sum(1) if none_cols else np.ones(len(probs))


class VerifiedDecision(LinearDecision):
    """A fitted logistic regression over some of :func:`verified_features` (the verifier sidecar's ``decision``).

    Raises:
        ValueError: the block was fitted for other features.
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec, verified_feature_names(), VERIFIED_FEATURE_VERSION)

    def log_odds(self, features: np.ndarray) -> float:
        return self.score(features)

    def contributions(self, features: np.ndarray, top: int = 3) -> list[tuple[str, float]]:
        """The features that pushed this decision most, as (name, weight x value), largest first."""
        return self.parts(features, top)
