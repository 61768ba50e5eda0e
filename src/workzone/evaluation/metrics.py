"""Binary classification metrics, as pure functions and as an accumulating ``Metric``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["confusion", "matthews_corrcoef", "roc_auc", "binary_report", "BinaryMetric", "percentiles"]


def confusion(y_true: Sequence[int], y_pred: Sequence[int]) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn).

    Examples:
        >>> confusion([1, 0, 1, 0], [1, 1, 0, 0])
        (1, 1, 1, 1)
    """
    t = np.asarray(y_true, dtype=int)
    p = np.asarray(y_pred, dtype=int)
    if t.shape != p.shape:
        raise ValueError(f"expected labels and predictions of the same shape, got {t.shape} and {p.shape}")
    return (int(((t == 1) & (p == 1)).sum()), int(((t == 0) & (p == 1)).sum()),
            int(((t == 0) & (p == 0)).sum()), int(((t == 1) & (p == 0)).sum()))


def matthews_corrcoef(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Matthews correlation coefficient; 0.0 when it is undefined (a row or column of zeros).

    Examples:
        >>> matthews_corrcoef([1, 1, 0, 0], [1, 1, 0, 0])
        1.0
        >>> matthews_corrcoef([1, 1, 0, 0], [0, 0, 1, 1])
        -1.0
    """
    tp, fp, tn, fn = confusion(y_true, y_pred)
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else (tp * tn - fp * fn) / denom


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve by the rank statistic (ties count half); None with one class.

    Examples:
        >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    t = np.asarray(y_true, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[t == 1], s[t == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(allv))
    r[order] = ranks
    rank_pos = r[: len(pos)].sum()
    return float((rank_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _safe_div(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def binary_report(y_true: Sequence[int], probs: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Every metric of a binary decision at ``p > threshold``.

    ``mcc`` is None (undefined) when the labels hold one class only: such a subset is scored by its
    recall (only road work) or specificity (none), never by an MCC of 0.

    Examples:
        >>> binary_report([0, 0, 0], [0.1, 0.2, 0.9])["mcc"] is None
        True
    """
    p = np.asarray(probs, dtype=np.float64)
    pred = (p > threshold).astype(int)
    tp, fp, tn, fn = confusion(y_true, pred)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = None if not precision or not recall else 2 * precision * recall / (precision + recall)
    n = tp + fp + tn + fn
    return {
        "n": n, "positives": tp + fn, "negatives": tn + fp,
        "mcc": matthews_corrcoef(y_true, pred) if tp + fn and tn + fp else None,
        "accuracy": _safe_div(tp + tn, n),
        "precision": precision, "recall": recall, "specificity": _safe_div(tn, tn + fp), "f1": f1,
        "roc_auc": roc_auc(y_true, p),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    v = np.asarray(values, dtype=np.float64)
    return {f"p{int(q)}": (float(np.percentile(v, q)) if len(v) else None) for q in qs}


@dataclass
class BinaryMetric:
    """Accumulates labels and probabilities: ``update`` / ``reset`` / ``compute``."""

    threshold: float = 0.5
    _y: list[int] = field(default_factory=list)
    _p: list[float] = field(default_factory=list)

    def update(self, labels: Sequence[int], probs: Sequence[float]) -> None:
        if len(labels) != len(probs):
            raise ValueError(f"expected as many labels as probabilities, got {len(labels)} and {len(probs)}")
        self._y.extend(int(x) for x in labels)
        self._p.extend(float(x) for x in probs)

    def reset(self) -> None:
        self._y.clear()
        self._p.clear()

    def compute(self) -> dict[str, Any]:
        return binary_report(self._y, self._p, self.threshold)
