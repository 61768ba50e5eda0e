"""Pooled leave-one-source-out numbers from out-of-fold scores, with confidence intervals.

Input: one row per image with its source, condition, label and out-of-fold log-odds (each from a
model that never saw the image's source). Pooled MCC is computed over every image of every source
at once, so a model that only separates sources from each other scores low; per source the table
shows recall for sources that are all road work and specificity for sources that have none (an
MCC is undefined there and never shown as 0).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from workzone.evaluation.metrics import matthews_corrcoef

__all__ = ["OofRow", "read_oof_rows", "wilson_interval", "bootstrap_mcc", "loso_summary", "format_markdown",
           "cross_fit"]


@dataclass(frozen=True)
class OofRow:
    """One image's out-of-fold scores."""

    key: str
    source: str
    condition: str
    label: int
    fold: str
    scores: dict[str, float]


def read_oof_rows(path: Path, *, fold_column: str = "fold", condition_column: str = "condition") -> list[OofRow]:
    """The rows of an out-of-fold scores CSV (``workzone loso-scores``): key, label, source, a fold and a
    condition column, then one column of log-odds per stage (empty: the stage abstained).

    Args:
        fold_column: the column that groups sources into held-out folds (``source``: one per source).
        condition_column: the column the per-condition table groups by.

    Raises:
        DataError: a required column is missing or a cell is not a number; the message names the
            file, the column and the flag that fixes it.
    """
    import csv

    from workzone.errors import DataError

    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        recs = list(reader)
    flags = {fold_column: "--fold-column (e.g. --fold-column source to hold out one source per fold)",
             condition_column: "--condition-column (e.g. --condition-column source)"}
    for col in ("key", "label", "source", fold_column, condition_column):
        if col not in columns:
            fix = (f"name the column to use with {flags[col]}" if col in flags
                   else "write the file with `workzone loso-scores`")
            raise DataError(f"{path}: no column {col!r} (columns: {', '.join(columns) or 'none'}); {fix}")
    fixed = {"key", "label", "source", "condition", "fold", fold_column, condition_column}
    rows = []
    for line, r in enumerate(recs, start=2):
        try:
            rows.append(OofRow(r["key"], r["source"], r[condition_column], int(r["label"]), r[fold_column],
                               {k: (float(v) if v not in ("", None) else None) for k, v in r.items() if k not in fixed}))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}:{line}: {exc}; labels are 0/1 and stage columns log-odds (empty: abstained)") from exc
    if not rows:
        raise DataError(f"{path}: no rows")
    if len({r.fold for r in rows}) < 2:
        raise DataError(f"{path}: column {fold_column!r} has one value, so nothing is held out; "
                        f"choose another with {flags[fold_column]}")
    return rows


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion.

    Examples:
        >>> [round(v, 3) for v in wilson_interval(8, 10)]
        [0.49, 0.943]
    """
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def bootstrap_mcc(y: np.ndarray, pred: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of MCC over images."""
    rng = np.random.default_rng(seed)
    n = len(y)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        vals.append(matthews_corrcoef(y[i], pred[i]))
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5)))


def cross_fit(rows: Sequence[OofRow], fit, predict) -> np.ndarray:  # noqa: ANN001 - callables over rows
    """Out-of-fold predictions of a second-level model: for each fold, fit on the other folds' rows.

    Args:
        rows: the out-of-fold rows.
        fit: ``fit(rows) -> model``.
        predict: ``predict(model, rows) -> np.ndarray`` of log-odds.

    Returns:
        (N,) log-odds in ``rows`` order, each from a model fitted without its fold.
    """
    out = np.zeros(len(rows))
    folds = sorted({r.fold for r in rows})
    for f in folds:
        test = [i for i, r in enumerate(rows) if r.fold == f]
        train = [r for r in rows if r.fold != f]
        model = fit(train)
        out[test] = predict(model, [rows[i] for i in test])
    return out


def _rate(y: np.ndarray, pred: np.ndarray, positive: bool) -> dict:
    mask = y == (1 if positive else 0)
    n = int(mask.sum())
    k = int((pred[mask] == (1 if positive else 0)).sum())
    lo, hi = wilson_interval(k, n)
    return {"n": n, "value": k / n if n else float("nan"), "ci": [lo, hi]}


def loso_summary(rows: Sequence[OofRow], log_odds: np.ndarray, *, threshold: float = 0.0) -> dict:
    """Pooled and per-source / per-condition numbers of one candidate's out-of-fold log-odds."""
    y = np.array([r.label for r in rows])
    pred = (np.asarray(log_odds) > threshold).astype(int)
    out: dict = {
        "n": len(rows), "positives": int(y.sum()),
        "pooled_mcc": matthews_corrcoef(y, pred), "pooled_mcc_ci": list(bootstrap_mcc(y, pred)),
        "recall": _rate(y, pred, True), "specificity": _rate(y, pred, False),
        "auc": _auc(y, np.asarray(log_odds)),
        "per_source": {}, "per_condition": {},
    }
    for group, key in (("per_source", lambda r: r.source), ("per_condition", lambda r: r.condition)):
        idx: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            idx[key(r)].append(i)
        for name, ii in sorted(idx.items()):
            yy, pp = y[ii], pred[ii]
            entry = {"n": len(ii), "positives": int(yy.sum())}
            if yy.sum():
                entry["recall"] = _rate(yy, pp, True)
            if (1 - yy).sum():
                entry["specificity"] = _rate(yy, pp, False)
            if 0 < yy.sum() < len(yy):
                entry["mcc"] = matthews_corrcoef(yy, pp)
            out[group][name] = entry
    return out


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    # Average ranks over ties.
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):
        m = allv == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _fmt_rate(e: dict | None) -> str:
    if not e or not e["n"]:
        return "–"
    return f"{e['value']:.2f} [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}] (n {e['n']})"


def format_markdown(summaries: dict[str, dict], sources: Iterable[str], conditions: Iterable[str]) -> str:
    """A candidates x (pooled, sources, conditions) table: recall for road work, specificity for none."""
    names = list(summaries)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines.append("| **pooled MCC** [95 % CI] | " + " | ".join(
        f"**{s['pooled_mcc']:.3f}** [{s['pooled_mcc_ci'][0]:.2f}, {s['pooled_mcc_ci'][1]:.2f}]" for s in summaries.values()) + " |")
    lines.append("| ROC-AUC | " + " | ".join(f"{s['auc']:.3f}" for s in summaries.values()) + " |")
    lines.append("| recall (all road work) | " + " | ".join(_fmt_rate(s["recall"]) for s in summaries.values()) + " |")
    lines.append("| specificity (all none) | " + " | ".join(_fmt_rate(s["specificity"]) for s in summaries.values()) + " |")
    if any("cascade" in s for s in summaries.values()):
        # A whole cascade (tuned out of fold): where its images left, and the mean cost they ran up.
        lines.append("| left at each tier (mean cost) | " + " | ".join(
            "–" if "cascade" not in s else
            ", ".join(f"{t} {r:.1%}" for t, r in zip(s["cascade"]["tiers"], s["cascade"]["exit_rates"]))
            + f" ({s['cascade']['mean_cost_ms']:.1f} ms)" for s in summaries.values()) + " |")
    for group, keys in (("per_source", sources), ("per_condition", conditions)):
        for k in keys:
            cells = []
            for s in summaries.values():
                e = s[group].get(k)
                if e is None:
                    cells.append("–")
                    continue
                parts = []
                if "recall" in e:
                    parts.append("rec " + _fmt_rate(e["recall"]))
                if "specificity" in e:
                    parts.append("spec " + _fmt_rate(e["specificity"]))
                cells.append("; ".join(parts))
            label = k if group == "per_source" else f"*{k}*"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
