"""Candidate boxes named by eye: small real positives and in-scene negatives for the verifier.

The verifier's crop table (:func:`workzone_train.verifier.build_crop_table`) labels a detector candidate by the real
box it covers; on a road-work image where nobody boxed the objects, a candidate stays unlabelled (scored, never
learnt from). Most of those are small: WMaia9's far drums and cones, TraCon's, QEW CCTV's. A person naming them from
contact sheets (``lab/scripts/label_sheets.py``) gives the verifier what no source in ../shared has, real work-zone
objects under 32 px, and negatives that sit inside work zones.

The labels file is a CSV committed with the lab (``lab/labels/candidate_labels.csv``): ``key`` (the corpus key of
the image), ``x1, y1, x2, y2`` (the box, normalised to the image), ``label`` (a verifier class, or ``unsure``:
kept in the file, never learnt from). A label names an image region, not a detector run's box: a candidate of
another run takes it where the two boxes overlap by at least :data:`MATCH_IOU`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from workzone.errors import DataError
from workzone.io.atomic import atomic_path

__all__ = ["MATCH_IOU", "UNSURE", "HandLabels", "read_hand_labels", "label_of", "collect_hand_labels"]

# Two boxes of one object from two detector runs overlap by 0.7 or more; neighbouring cones of a row seldom do.
MATCH_IOU = 0.7
UNSURE = "unsure"
_COLUMNS = ("key", "x1", "y1", "x2", "y2", "label")

HandLabels = Mapping[str, Sequence[tuple[np.ndarray, str]]]


def _classes() -> tuple[str, ...]:
    from workzone_train.verifier import VERIFIER_CLASSES

    return VERIFIER_CLASSES + (UNSURE,)


def read_hand_labels(path: str | Path) -> dict[str, list[tuple[np.ndarray, str]]]:
    """The labels of ``path`` by image key: (box [x1, y1, x2, y2] normalised, label) pairs, ``unsure`` included.

    Raises:
        DataError: the file is missing, lacks a column, or a row holds a bad box or an unknown label.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no hand-labels file; write one with `python lab/scripts/label_sheets.py collect`")
    allowed = _classes()
    out: dict[str, list[tuple[np.ndarray, str]]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(_COLUMNS)}")
        for n, row in enumerate(reader, start=2):
            label = row["label"].strip()
            if label not in allowed:
                raise DataError(f"{path}:{n}: label {label!r} is not one of {', '.join(allowed)}")
            try:
                box = np.array([float(row[c]) for c in ("x1", "y1", "x2", "y2")])
            except ValueError as exc:
                raise DataError(f"{path}:{n}: box is not four numbers ({exc})") from None
            if not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
                raise DataError(f"{path}:{n}: box {box.tolist()} is not x1 < x2, y1 < y2 within [0, 1]")
            out.setdefault(row["key"], []).append((box, label))
    return out


def label_of(labels: HandLabels, key: str, box: Sequence[float]) -> str:
    """The hand label of the region ``box`` of image ``key`` (the best-overlapping labelled box at
    :data:`MATCH_IOU` or more), or "" where there is none or it is ``unsure``."""
    from workzone_train.detector import box_iou

    marked = labels.get(key)
    if not marked:
        return ""
    iou = box_iou(np.asarray(box, np.float64).reshape(1, 4), np.array([b for b, _ in marked]))[0]
    j = int(iou.argmax())
    return marked[j][1] if iou[j] >= MATCH_IOU and marked[j][1] != UNSURE else ""


def collect_hand_labels(manifest: Path, label_files: Iterable[Path], out: Path) -> dict[str, int]:
    """Join the sheets' ``manifest.csv`` (id, key, box) with label files (id, label) into ``out`` (the committed
    CSV, sorted); returns counts per label.

    Raises:
        DataError: a label file names an id the manifest lacks, labels one id twice, or uses an unknown label.
    """
    allowed = _classes()
    with manifest.open(newline="", encoding="utf-8") as f:
        tiles = {r["id"]: r for r in csv.DictReader(f)}
    named: dict[str, str] = {}
    for lf in label_files:
        with lf.open(newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                tid, label = row["id"].strip(), row["label"].strip()
                if tid not in tiles:
                    raise DataError(f"{lf}:{n}: id {tid!r} is not in {manifest}")
                if label not in allowed:
                    raise DataError(f"{lf}:{n}: label {label!r} is not one of {', '.join(allowed)}")
                if named.get(tid, label) != label:
                    raise DataError(f"{lf}:{n}: id {tid} labelled twice ({named[tid]!r}, {label!r})")
                named[tid] = label
    rows = sorted((tiles[t]["key"], *(tiles[t][c] for c in ("x1", "y1", "x2", "y2")), lab) for t, lab in named.items())
    counts: dict[str, int] = {}
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(_COLUMNS)
        for r in rows:
            w.writerow(r)
            counts[r[-1]] = counts.get(r[-1], 0) + 1
    return counts
