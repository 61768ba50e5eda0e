"""The object decision's out-of-fold column for several detection runs, beside a loso-scores CSV.

`workzone train loso-scores` computes one run's `objects` column and the verifier's columns with it; comparing
detection runs whose candidates the verifier never judged (another treatment, another input size) needs only the
object decision: the class-blind features of each image's detections, the decision cross-fitted over the folds.

Usage: python lab/scripts/object_columns.py --data ../shared/data --scores runs/ev-vrun1ng/oof_scores.csv \
           --run objects_rj=runs/norj/oof_rj.json.gz --run objects_norj=runs/norj/oof_norj.json.gz --out cols.csv
       workzone train loso-table cols.csv --candidate "as trained=objects_rj" --candidate "no round trip=objects_norj"
"""
from __future__ import annotations

import argparse
from pathlib import Path

from workzone.evaluation.loso_table import read_oof_rows
from workzone_train.corpus import load_corpus
from workzone_train.oof_scores import append_score_columns, decision_scores, object_feature_matrix, read_fold_detections
from workzone_train.scene_synth import OBJECT_CLASSES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--scores", type=Path, required=True, help="a loso-scores CSV (its rows and folds)")
    ap.add_argument("--run", action="append", required=True, metavar="NAME=DETECTIONS",
                    help="a column name and an out-of-fold detections file (repeat)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = read_oof_rows(args.scores)
    corpus = {s.key: s for s in load_corpus(args.data)}
    images = [corpus[r.key] for r in rows]
    cols = {}
    for spec in args.run:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"--run {spec!r}: use NAME=DETECTIONS")
        cols[name] = decision_scores(rows, object_feature_matrix(images, read_fold_detections(Path(path)), OBJECT_CLASSES))
    append_score_columns(args.scores, cols, args.out)
    print(f"{len(rows)} images, columns {', '.join(cols)} -> {args.out}")


if __name__ == "__main__":
    main()
