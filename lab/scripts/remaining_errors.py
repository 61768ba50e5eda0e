"""Where the default's remaining out-of-fold errors come from: per source, its false alarms by the class and height
of the candidate that the verifier trusted most, and its misses by what the detector and the verifier did.

Why: the pooled table says how often the default errs; this says on what, so that the next round of data or
training aims at it (issue 22: tail lights, warning triangles, red-white posts, small far objects).

The default is the ``signs+verify`` fusion of `workzone train loso-table`, cross-fitted over the folds and read at
log-odds 0, exactly as that table scores it. A candidate is one of the detector's out-of-fold boxes that the verifier
judged (the crop table of `workzone train verifier-pack`); its P(object) is 1 - P(none) - P(sign_other).

Usage: python lab/scripts/remaining_errors.py --data ../shared/data --detections runs/gpu1/oof_detections.json \
           --verifier-run runs/vrun1 --scores runs/ev-vrun1ng/oof_scores.csv [--out remaining_errors.md]
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from workzone.evaluation.loso_table import cross_fit, loso_summary, read_oof_rows
from workzone.fusion.calibration import fit_logistic, score_matrix
from workzone_train.contact_sheet import box_tile, save_sheet
from workzone.verified_evidence import NONE_CLASSES
from workzone_train.verifier import VERIFIER_CLASSES
from workzone_train.verifier_tune import ImageHeights, add_judged_candidates_arguments, judged_candidates
from workzone_train.verifier_tune import p_object as object_probability

NOT_OBJECT = NONE_CLASSES  # what a candidate called so is not: none, sign_other
STAGES = ("signs", "verify")


def default_log_odds(rows: list) -> np.ndarray:  # noqa: ANN001 - OofRow
    """The loso-table's ``signs+verify`` candidate: a balanced logistic fusion cross-fitted over the folds."""
    names = list(STAGES)

    def fit(train):  # noqa: ANN001, ANN202
        return fit_logistic(score_matrix([r.scores for r in train], names), np.array([r.label for r in train]),
                            l2=1e-2, balanced=True, prior=1.0)

    def predict(model, test):  # noqa: ANN001, ANN202
        return model.bias + score_matrix([r.scores for r in test], names) @ model.weights

    return cross_fit(rows, fit, predict)


def contact_sheet(items: list, picks: list, p_object, verifier_class, out: Path) -> None:  # noqa: ANN001
    """Each pick (source, crop index) as a tile labelled with the source, the verifier's class and its P(object)."""
    tiles = [box_tile(items[i].path, items[i].box, f"{source[:8]} {verifier_class(i)[:6]} {p_object(i):.2f}")
             for source, i in sorted(picks)]
    save_sheet(tiles, out)
    print(f"{len(tiles)} tiles -> {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_judged_candidates_arguments(ap)
    ap.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    ap.add_argument("--set-aside", type=Path, help="image keys (one per line, '#' comments) that an audit found "
                                                  "mislabelled: the pooled MCC is also given without them")
    ap.add_argument("--sheet", type=Path, help="contact sheet of each false alarm's trusted candidate (PNG; for looking, "
                                              "not for committing: most sources grant no redistribution)")
    args = ap.parse_args()

    items, probs = judged_candidates(args.data, args.detections, args.verifier_run, args.hand_labels)
    obj_cols = [i for i, c in enumerate(VERIFIER_CLASSES) if c not in NOT_OBJECT]
    heights = ImageHeights()

    def height_px(i: int) -> float:
        return heights(items[i])

    def p_object(i: int) -> float:
        return object_probability(probs[i])

    def verifier_class(i: int) -> str:
        return VERIFIER_CLASSES[obj_cols[int(np.argmax(probs[i][obj_cols]))]]

    cands: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if it.kind == "candidate" and i in probs:
            cands[it.key].append(i)

    rows = read_oof_rows(args.scores)
    z = default_log_odds(rows)
    lines: list[str] = []
    say = lines.append
    fa = [r for r, zi in zip(rows, z) if r.label == 0 and zi > 0]
    miss = [r for r, zi in zip(rows, z) if r.label == 1 and zi <= 0]
    negatives = Counter(r.source for r in rows if r.label == 0)
    positives = Counter(r.source for r in rows if r.label == 1)
    say(f"{len(rows):,} images; the default (signs+verify, cross-fitted, log-odds > 0): {len(fa)} false alarms in "
        f"{sum(negatives.values()):,} images without road work, {len(miss)} misses in {sum(positives.values()):,} "
        "with it.\n")

    say("## False alarms: the candidate the verifier trusted most\n")
    say("| source | false alarms / negatives | its verifier class (count) | height px, median | P(object), median | "
        "detector class (count) |")
    say("| --- | ---: | --- | ---: | ---: | --- |")
    by_src: dict[str, list] = defaultdict(list)
    for r in fa:
        best = max(cands.get(r.key, []), key=p_object, default=None)
        by_src[r.source].append(best)
    for src in sorted(by_src, key=lambda s: -len(by_src[s])):
        b = [i for i in by_src[src] if i is not None]
        vc = Counter(verifier_class(i) for i in b).most_common(3)
        dc = Counter(items[i].det_class for i in b).most_common(3)
        say(f"| {src} | {len(by_src[src])} / {negatives[src]} | {', '.join(f'{c} {n}' for c, n in vc) or '-'} | "
            f"{np.median([height_px(i) for i in b]) if b else float('nan'):.0f} | "
            f"{np.median([p_object(i) for i in b]) if b else float('nan'):.2f} | "
            f"{', '.join(f'{c} {n}' for c, n in dc) or '-'} |")
    alls = [i for v in by_src.values() for i in v if i is not None]
    say(f"\nAll false alarms, by the trusted candidate's verifier class: "
        f"{', '.join(f'{c} {n}' for c, n in Counter(verifier_class(i) for i in alls).most_common())}; "
        f"its height: median {np.median([height_px(i) for i in alls]):.0f} px.\n")

    say("## Misses: what the detector proposed and the verifier answered\n")
    say("| source | misses / road work | no candidate | best P(object) < 0.5 | best P(object) >= 0.5 (fusion said no) | "
        "best candidate height px, median |")
    say("| --- | ---: | ---: | ---: | ---: | ---: |")
    by_src = defaultdict(list)
    for r in miss:
        by_src[r.source].append(max(cands.get(r.key, []), key=p_object, default=None))
    for src in sorted(by_src, key=lambda s: -len(by_src[s])):
        b = by_src[src]
        some = [i for i in b if i is not None]
        low = sum(1 for i in some if p_object(i) < 0.5)
        say(f"| {src} | {len(b)} / {positives[src]} | {sum(1 for i in b if i is None)} | {low} | {len(some) - low} | "
            f"{np.median([height_px(i) for i in some]) if some else float('nan'):.0f} |")
    if args.set_aside is not None:
        aside = {ln.strip() for ln in args.set_aside.read_text(encoding="utf-8").splitlines()
                 if ln.strip() and not ln.startswith("#")}
        kept = [r for r in rows if r.key not in aside]
        both = loso_summary(rows, z), loso_summary(kept, default_log_odds(kept))
        say(f"\n## Without the {len(rows) - len(kept)} images of `{args.set_aside.name}`\n")
        say("| images | pooled MCC [95 % CI] | ROC-AUC |")
        say("| --- | --- | ---: |")
        for name, s in zip(("all, as labelled", "without them"), both):
            lo, hi = s["pooled_mcc_ci"]
            say(f"| {name}: {s['n']:,} | {s['pooled_mcc']:.3f} [{lo:.2f}, {hi:.2f}] | {s['auc']:.3f} |")
    if args.sheet is not None:
        contact_sheet(items, [(r.source, i) for r in fa for i in [max(cands.get(r.key, []), key=p_object, default=None)]
                              if i is not None], p_object, verifier_class, args.sheet)
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
