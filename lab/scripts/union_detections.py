"""The union of two packed out-of-fold detection files (e.g. the whole-image pass and `objects-oof --tiles 2`).

A box of the second file that overlaps a box of the same class in the first (IoU >= --iou) is the same object
seen twice and is dropped; the rest are kept, so the candidates of an image are the whole-image pass's plus what
only the closer look found. Written in the same packed format, for `loso-scores --detections`.

    python lab/scripts/union_detections.py runs/gpu1/oof_detections.json runs/tiles2/oof_detections.json.gz \
        --out runs/union2/oof_detections.json.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from workzone_train.fold_detect import union_detections


def _load(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iou", type=float, default=0.5)
    args = ap.parse_args()
    first, second = _load(args.first), _load(args.second)
    if set(first) != set(second):
        raise SystemExit(f"the files hold other folds: {sorted(first)} against {sorted(second)}")
    out = {}
    for fold, blob in first.items():
        other = second[fold]["detections"]
        dets = {k: union_detections(rows, other.get(k, []), args.iou).round(4).tolist()
                for k, rows in blob["detections"].items()}
        out[fold] = {"fold": fold, "summary": {**blob.get("summary", {}), "union_with": str(args.second)},
                     "detections": dets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out, "wt", encoding="utf-8") as fh:
        json.dump(out, fh)
    n = sum(len(v) for b in out.values() for v in b["detections"].values())
    print(f"{n} boxes -> {args.out}")


if __name__ == "__main__":
    main()
