"""Uncertainty and curves for the report: confidence intervals, ROC / PR curves, reliability bins.

Pure numpy; every function takes labels in {0, 1} and probabilities in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from workzone.evaluation.metrics import matthews_corrcoef

__all__ = ["Interval", "wilson_interval", "bootstrap_interval", "fast_auc", "roc_curve", "pr_curve",
           "reliability_bins", "headline_metrics", "subset_score"]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval (``low``/``high`` are None when undefined)."""

    value: float | None
    low: float | None
    high: float | None
    method: str

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "method": self.method}


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> Interval:
    """Wilson score interval of a proportion (95 % by default); undefined with no trials.

    Examples:
        >>> iv = wilson_interval(9, 10)
        >>> round(iv.low, 3), round(iv.high, 3)
        (0.596, 0.982)
        >>> wilson_interval(0, 0).value is None
        True
    """
    if trials <= 0:
        return Interval(None, None, None, "wilson")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # min/max with p: at p = 0 or 1 rounding could put the bound a hair inside the estimate.
    return Interval(p, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)), "wilson")


def bootstrap_interval(y: np.ndarray, p: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], float | None],
                       *, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``statistic(y, p)``, resampling images with replacement.

    Resamples on which the statistic is undefined (None, e.g. AUC with one class) are dropped.
    """
    value = statistic(y, p)
    if value is None or len(y) < 2:
        return Interval(value, None, None, "bootstrap")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(resamples, len(y)))
    draws = [statistic(y[i], p[i]) for i in idx]
    vals = np.array([d for d in draws if d is not None], dtype=np.float64)
    if len(vals) == 0:
        return Interval(value, None, None, "bootstrap")
    alpha = (1 - level) / 2
    return Interval(float(value), float(np.quantile(vals, alpha)), float(np.quantile(vals, 1 - alpha)),
                    f"bootstrap ({resamples} resamples)")


def fast_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC-AUC as P(score of a positive > score of a negative), ties counting half; None with one class.

    Examples:
        >>> fast_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    if len(pos) == 0 or len(neg) == 0:
        return None
    below = np.searchsorted(neg, pos, side="left")
    at_or_below = np.searchsorted(neg, pos, side="right")
    return float((below.sum() + 0.5 * (at_or_below - below).sum()) / (len(pos) * len(neg)))


def _mcc(y: np.ndarray, p: np.ndarray) -> float | None:
    if y.min() == y.max():  # one class: MCC is undefined, not 0
        return None
    return matthews_corrcoef(y, (p > 0.5).astype(int))


def _counts_by_threshold(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True positives and images called road work when the threshold sits at each distinct score (highest first)."""
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.nonzero(np.diff(ps))[0], len(ps) - 1]  # the last index of each distinct score
    return np.cumsum(ys)[last], last + 1


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1).

    Returns:
        (fpr, tpr), each of shape (k,).
    """
    tp, called = _counts_by_threshold(y, p)
    fp = called - tp
    npos, nneg = max(1, int(y.sum())), max(1, int(len(y) - y.sum()))
    return np.r_[0.0, fp / nneg], np.r_[0.0, tp / npos]


def pr_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at every distinct threshold (highest threshold first).

    Returns:
        (recall, precision), each of shape (k,).
    """
    tp, called = _counts_by_threshold(y, p)
    return tp / max(1, int(y.sum())), tp / called


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Mean predicted probability vs observed frequency of road work in equal-width bins (empty bins left out)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        if m.any():
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(m.sum()),
                        "mean_p": float(p[m].mean()), "observed": float(y[m].mean())})
    return out


def headline_metrics(y: np.ndarray, p: np.ndarray, *, resamples: int = 1000) -> dict[str, Interval]:
    """MCC and ROC-AUC with bootstrap intervals; accuracy, recall, specificity, precision with Wilson ones."""
    pred = (p > 0.5).astype(int)
    tp = int(((y == 1) & (pred == 1)).sum())
    fp = int(((y == 0) & (pred == 1)).sum())
    tn = int(((y == 0) & (pred == 0)).sum())
    fn = int(((y == 1) & (pred == 0)).sum())
    return {
        "MCC": bootstrap_interval(y, p, _mcc, resamples=resamples),
        "ROC-AUC": bootstrap_interval(y, p, fast_auc, resamples=resamples),
        "accuracy": wilson_interval(tp + tn, len(y)),
        "recall": wilson_interval(tp, tp + fn),
        "specificity": wilson_interval(tn, tn + fp),
        "precision": wilson_interval(tp, tp + fp),
    }


#: Fewer images than this of a class and a subset's MCC is not shown (see :func:`subset_score`).
MIN_CLASS_FOR_MCC = 2


def subset_score(y: Sequence[int], p: Sequence[float]) -> dict[str, Any]:
    """The score that means something for a subset: MCC when it has both classes, else recall
    (only positives) or specificity (only negatives). MCC of a one-class subset is undefined, never 0;
    a subset with fewer than :data:`MIN_CLASS_FOR_MCC` images of a class is scored on its other class
    (``note`` says how many it left out).

    Examples:
        >>> subset_score([0, 0, 0, 0], [0.1, 0.2, 0.9, 0.3])["metric"]
        'specificity'
        >>> subset_score([0, 0, 0, 0], [0.1, 0.2, 0.9, 0.3])["interval"].value
        0.75
    """
    ya, pa = np.asarray(y, dtype=int), np.asarray(p, dtype=np.float64)
    pred = pa > 0.5
    npos, nneg = int(ya.sum()), int(len(ya) - ya.sum())
    if 0 < min(npos, nneg) < MIN_CLASS_FOR_MCC:
        # One or two images of a class make an MCC that swings from -1 to 1 on them alone: score the
        # subset as if it had one class, and say how many of the other it holds.
        few = npos if npos < nneg else nneg
        what = "road-work image" if npos < nneg else "image without road work"
        note = f"; MCC not shown: {few} {what}{'s' if few > 1 else ''} only"
        keep = ya == (0 if npos < nneg else 1)
        out = subset_score(ya[keep], pa[keep])
        return {**out, "n": len(ya), "positives": npos, "note": note}
    if npos and nneg:
        return {"metric": "MCC", "n": len(ya), "positives": npos,
                "interval": bootstrap_interval(ya, pa, _mcc, resamples=500),
                "recall": float(pred[ya == 1].mean()), "specificity": float((~pred[ya == 0]).mean())}
    if npos:
        return {"metric": "recall", "n": len(ya), "positives": npos,
                "interval": wilson_interval(int(pred[ya == 1].sum()), npos)}
    return {"metric": "specificity", "n": len(ya), "positives": 0,
            "interval": wilson_interval(int((~pred[ya == 0]).sum()), nneg)}
