"""Out-of-fold stage scores over the ten sources: what `workzone tune --scores` and the LOSO table read.

Every score of an image comes from models that never saw its source:

- ``objects``: the detector of the image's fold (its detections, from
  ``workzone train objects-loso``), summarised by the object decision
  (:mod:`workzone.object_evidence`) fitted on the *other* folds' out-of-fold detections
  (cross-fitting, so the decision is as honest as the detector);
- ``signs``: the sign-OCR stage, which learns nothing from these images (a lexicon);
- ``context``: the frozen-lr whole-image model fitted without the image's fold.

The decision shipped in the detector's sidecar is the same regression fitted on every fold's
out-of-fold detections.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from workzone.evaluation.loso_table import OofRow, cross_fit
from workzone.fusion.calibration import fit_logistic
from workzone.object_evidence import FEATURE_VERSION, feature_names, lookalike_indices, object_features
from workzone_train.corpus import CorpusSample

__all__ = ["DECISION_FEATURES", "PER_CLASS_FEATURES", "read_fold_detections", "append_score_columns", "detection_input_size", "object_feature_matrix", "fit_decision", "decision_scores",
           "write_scores_csv"]

# The summaries the decision uses. Chosen by pooled out-of-fold MCC over the ten sources: per-class
# maxima and counts fit the sources the decision was fitted on (stock cone photos) and lost 0.03 MCC
# and a third of the US work zones when those were left out; the class-blind summaries transfer.
DECISION_FEATURES = ("max_any", "count_any", "tallest")
# The class-aware alternative reported beside it: each work-zone class's best score and count, plus the same.
PER_CLASS_FEATURES = tuple(f"{k}_{c}" for c in ("cone", "drum", "post", "barricade", "barrier", "sign", "arrow_board",
                                                 "worker", "machine") for k in ("max", "count")) + DECISION_FEATURES


def read_fold_detections(path: str | Path) -> dict[str, np.ndarray]:
    """Corpus key -> (D, 6) normalised detections, from a packed ``oof_detections.json`` (or ``.json.gz``)."""
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        blob = json.load(fh)
    out: dict[str, np.ndarray] = {}
    for fold in blob.values():
        for key, rows in fold["detections"].items():
            if not key.startswith("objects::"):
                out[key] = np.asarray(rows, np.float64).reshape(-1, 6)
    return out


def detection_input_size(path: str | Path) -> int:
    """The detector input size a packed detections file was made at (its folds' ``summary``), e.g. 224.

    Raises:
        ValueError: the folds disagree or name no size.
    """
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        blob = json.load(fh)
    sizes = {(fold.get("summary") or {}).get("input_size") or (fold.get("summary") or {}).get("size") for fold in blob.values()}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"{path}: its folds name input sizes {sorted(map(str, sizes))}; expected one")
    return int(sizes.pop())


def object_feature_matrix(samples: Sequence[CorpusSample], dets: Mapping[str, np.ndarray], class_names: Sequence[str],
                          features: Sequence[str] = DECISION_FEATURES) -> np.ndarray:
    """(N, F) decision features of ``samples`` (normalised detections: image height 1)."""
    names = feature_names(class_names)
    cols = [names.index(f) for f in features]
    missing = [s.key for s in samples if s.key not in dets]
    if missing:
        raise KeyError(f"no out-of-fold detections for {len(missing)} image(s), e.g. {missing[:3]}")
    skip = lookalike_indices(class_names)
    return np.array([object_features(dets[s.key], len(class_names), 1.0, skip)[cols]
                     for s in samples]).reshape(len(samples), len(cols))


def fit_decision(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, features: Sequence[str] = DECISION_FEATURES,
                 version: int = FEATURE_VERSION, fitted_on: str = "out-of-fold detections, eleven sources") -> dict:
    """A sidecar ``decision`` block: a class-balanced logistic regression over the named features (``version``
    is the feature layout's: the detector's, or the verifier's verified features)."""
    fit = fit_logistic(x, y, l2=l2, balanced=True)
    return {"version": version, "features": list(features), "bias": round(fit.bias, 6),
            "weights": [round(float(w), 6) for w in fit.weights], "fitted_on": fitted_on, "balanced": True, "l2": l2}


def decision_scores(rows: Sequence[OofRow], x: np.ndarray, *, l2: float = 1e-2) -> np.ndarray:
    """Cross-fitted decision log-odds: each fold's rows scored by a decision fitted on the other folds."""
    index = {r.key: i for i, r in enumerate(rows)}
    y = np.array([r.label for r in rows])

    def fit(train: Sequence[OofRow]):  # noqa: ANN202
        ii = [index[r.key] for r in train]
        return fit_logistic(x[ii], y[ii], l2=l2, balanced=True)

    def predict(model, test: Sequence[OofRow]) -> np.ndarray:  # noqa: ANN001
        ii = [index[r.key] for r in test]
        return model.bias + x[ii] @ model.weights

    return cross_fit(rows, fit, predict)


def append_score_columns(scores_csv: str | Path, columns: Mapping[str, np.ndarray], out: str | Path) -> Path:
    """Write ``scores_csv`` (a loso-scores CSV) to ``out`` with ``columns`` added, each one value per row in the
    CSV's order (as :func:`workzone.evaluation.loso_table.read_oof_rows` reads it): an experiment's variants beside
    the shipped columns, for `workzone train loso-table`."""
    with Path(scores_csv).open(newline="", encoding="utf-8") as f:
        src = list(csv.DictReader(f))
    for name, col in columns.items():
        if len(col) != len(src):
            raise ValueError(f"column {name!r} has {len(col)} values for {len(src)} rows of {scores_csv}")
    with Path(out).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(list(src[0]) + list(columns))
        for i, r in enumerate(src):
            w.writerow(list(r.values()) + [f"{columns[k][i]:.5f}" for k in columns])
    return Path(out)


def write_scores_csv(rows: Sequence[OofRow], path: str | Path) -> Path:
    """One row per image: key, label, source, condition, fold, then one column per stage (empty: abstained)."""
    stages = sorted({k for r in rows for k in r.scores})
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".part")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["key", "label", "source", "condition", "fold", *stages])
        for r in rows:
            w.writerow([r.key, r.label, r.source, r.condition, r.fold,
                        *["" if r.scores.get(s) is None else f"{r.scores[s]:.5f}" for s in stages]])
    tmp.replace(path)
    return path
