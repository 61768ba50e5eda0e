"""Is the verified decision too steep? Variants of its features that move less when a candidate's answer moves a little.

Version 1 of the class-aware features (`workzone.verified_evidence.verified_features`) held logits of maxima clipped
at +-6 and counts of candidates at P(object) >= 0.5: a candidate crossing 0.5 adds a whole count, and a confident
answer moving from P 0.99 to 0.999 moved a logit from 4.6 to 6.9 (clipped at 6). Moving the boxes by a quarter pixel
moved 4.7 % of the dev decisions by more than 0.02. Variants (columns ``verify-<name>``):
- ``c6``, ``c4``, ``c3``, ``c2p5``, ``c2``, ``c1p5``: the same logits clipped at +-6 (version 1), 4, 3 (version 2,
  shipped since 2026-12-07), 2.5, 2, 1.5;
- ``soft``: the counts as log1p of the summed probabilities (P(object), and per group the group's probability), so
  no threshold at 0.5, logits at +-6; ``softclip3``: the same at +-3;
- ``prob``: the maxima as probabilities (no logit), with the soft counts.
Each is cross-fitted over the folds as `loso-scores` fits the shipped one, and written as a column of the scores CSV
for `workzone train loso-table`, which pools each with the sign OCR as the default does (``signs+verify-<name>``).
Results: benchmarks/results/verified_steepness.md.

Usage: python lab/scripts/verified_steepness.py --data ../shared/data --detections lab/oof/2026-12-07/oof_detections.json.gz \
           --verifier-run lab/oof/2026-12-07/verifier-folds-seed0 --scores runs/oof_scores.csv --out runs/steepness.csv
       workzone train loso-table runs/steepness.csv --candidate "clip6=signs+verify-c6" \
           --candidate "clip3=signs+verify-c3" --candidate "soft=signs+verify-soft" ...
"""
from __future__ import annotations


import numpy as np

from workzone.object_evidence import clipped_logit
from workzone.verified_evidence import GROUPS, NONE_CLASSES, VERIFIED_LOGIT_CLIP
from workzone_train.oof_scores import append_score_columns, decision_scores
from workzone_train.verifier import VERIFIER_CLASSES, candidates_by_image
from workzone_train.verifier_tune import decision_probe

#: The clips tried: 6 was version 1 of the verified features, 3 is version 2 (shipped).
CLIPS = (1.5, 2.0, 2.5, 3.0, 4.0, 6.0)


def raw_parts(items: list, probs: dict, keys: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: the maxima (det, ver, joint, per group: (N, 3 + G)), the hard counts (P >= 0.5 overall and per
    group by the top class: (N, 1 + G)) and the soft counts (summed P(object) and group probabilities: (N, 1 + G))."""
    member = np.array([[c in m for m in GROUPS.values()] for c in VERIFIER_CLASSES], float)
    none_cols = [VERIFIER_CLASSES.index(c) for c in NONE_CLASSES]
    by = candidates_by_image(items, probs)
    g = len(GROUPS)
    maxima, hard, soft = np.zeros((len(keys), 3 + g)), np.zeros((len(keys), 1 + g)), np.zeros((len(keys), 1 + g))
    for r, k in enumerate(keys):
        idx = by.get(k, [])
        if not idx:
            continue
        pr = np.array([probs[i] for i in idx], float).reshape(len(idx), len(VERIFIER_CLASSES))
        score = np.array([items[i].det_score for i in idx], float)
        wz = np.array([items[i].det_class not in NONE_CLASSES for i in idx])
        p_obj = 1.0 - pr[:, none_cols].sum(1)
        grp = pr @ member
        maxima[r] = np.c_[np.where(wz, score, 0.0), p_obj, score * p_obj, grp].max(0)
        ok = p_obj >= 0.5
        hard[r] = np.r_[ok.sum(), (member[pr.argmax(1)] * ok[:, None]).sum(0)]
        soft[r] = np.r_[p_obj.sum(), grp.sum(0)]
    return maxima, hard, soft


def features(maxima: np.ndarray, counts: np.ndarray, *, clip: float | None) -> np.ndarray:
    """The class-aware layout (det, ver, joint, n, then per group max and n) from maxima and counts: maxima as
    logits clipped at ``clip``, or as probabilities when ``clip`` is None."""
    m = maxima if clip is None else clipped_logit(maxima, clip)
    n = np.log1p(counts)
    out = np.empty((len(m), 4 + 2 * (m.shape[1] - 3)))
    out[:, :3], out[:, 3] = m[:, :3], n[:, 0]
    out[:, 4::2], out[:, 5::2] = m[:, 3:], n[:, 1:]
    return out


def main() -> None:
    args, rows, items, probs, shipped = decision_probe(__doc__)
    keys = [r.key for r in rows]
    maxima, hard, soft = raw_parts(items, probs, keys)
    # The layout rebuilt from the raw parts at the shipped clip must be the shipped features, or the variants lie.
    rebuilt = features(maxima, hard, clip=VERIFIED_LOGIT_CLIP)
    print(f"shipped features rebuilt: max |difference| {np.abs(rebuilt - shipped).max():.1e}")
    variants = {f"c{c:g}".replace(".", "p"): features(maxima, hard, clip=c) for c in CLIPS}  # c2p5: +-2.5
    variants |= {"soft": features(maxima, soft, clip=6.0), "softclip3": features(maxima, soft, clip=3.0),
                 "prob": features(maxima, soft, clip=None)}
    cols = {f"verify-{name}": decision_scores(rows, x) for name, x in variants.items()}
    append_score_columns(args.scores, cols, args.out)
    print(f"{len(rows)} images -> {args.out}")


if __name__ == "__main__":
    main()
