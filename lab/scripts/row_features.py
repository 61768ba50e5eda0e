"""Does a second and third confirmed object make the verified decision better? ("Several cones in a line are
stronger than one red blob", issue 22 item 4.)

The shipped verified decision (class-aware features of `workzone.verified_evidence.verified_features`) holds the best
verifier P(object), the counts of candidates at P >= 0.5 and per-group bests. A lone keep-right Leitbake and a row of
channelizers can share the best candidate; what differs is the second and third. This adds, per image, the logits of
the 2nd and 3rd best P(object) among distinct boxes (one object proposed under two classes counts once: IoU < 0.5)
and the count of distinct confirmed boxes, cross-fits the decision over the folds as `loso-scores` does, and writes
the scores CSV with one column per variant for `workzone train loso-table`.

Usage: python lab/scripts/row_features.py --data ../shared/data --detections runs/gpu1/oof_detections.json \
           --verifier-run runs/vrun1 --scores runs/ev-vrun1ng/oof_scores.csv --out row_features.csv
       workzone train loso-table row_features.csv --candidate "default=signs+verify" \
           --candidate "+2nd=signs+verify2nd" --candidate "+2nd+3rd=signs+verify23" \
           --candidate "+2nd+3rd+n distinct=signs+verify23n"
"""
from __future__ import annotations

import math

import numpy as np

from workzone_train.detector import box_iou
from workzone_train.oof_scores import append_score_columns, decision_scores
from workzone_train.verifier import candidates_by_image
from workzone_train.verifier_tune import decision_probe, p_object


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def row_features(items: list, probs: dict, keys: list[str]) -> np.ndarray:
    """(N, 3): logit of the 2nd and 3rd best P(object) among an image's distinct candidate boxes, log1p of the
    distinct boxes at P >= 0.5."""
    by = candidates_by_image(items, probs)
    out = []
    for k in keys:
        ps = sorted(((p_object(probs[i]), np.array(items[i].box)) for i in by.get(k, [])),
                    key=lambda t: -t[0])
        kept: list = []
        for p, b in ps:
            if all(box_iou(b.reshape(1, 4), kb.reshape(1, 4))[0, 0] < 0.5 for _, kb in kept):
                kept.append((p, b))
        pv = [p for p, _ in kept] + [0.0, 0.0, 0.0]
        out.append([_logit(pv[1]), _logit(pv[2]), math.log1p(sum(1 for p, _ in kept if p >= 0.5))])
    return np.array(out).reshape(len(keys), 3)


def main() -> None:
    args, rows, items, probs, shipped = decision_probe(__doc__)
    keys = [r.key for r in rows]
    extra = row_features(items, probs, keys)
    cols = {name: decision_scores(rows, np.c_[shipped, extra[:, :n]])
            for name, n in (("verify2nd", 1), ("verify23", 2), ("verify23n", 3))}
    append_score_columns(args.scores, cols, args.out)
    print(f"{len(rows)} images -> {args.out}")


if __name__ == "__main__":
    main()
