"""How the fine-tuned verifier's out-of-fold P(work-zone object) depends on a candidate's height in pixels, for the
candidates the training labelled (matched to a real box: positive; on an image without road work or a look-alike:
negative), and which road-work images of one source the verifier turns from yes to no.

Why: the object decision alone recalls 0.76 of WMaia9's work zones out of fold, the default (with the verifier)
0.66. WMaia9's frames are 640 x 360 video; its objects are small, and it has no boxes, so none of its candidates is
a labelled positive. If the labelled positives are all large and the negatives small, the verifier can learn size
(or the detail that goes with it) instead of the object.

Usage: python lab/scripts/verifier_size_bias.py --data ../shared/data --detections runs/gpu1/oof_detections.json \
           --verifier-run runs/vrun1 --scores runs/ev-vrun1ng/oof_scores.csv [--source WMaia9-workzone] [--sheet out.png]
(the scores CSV: `workzone train loso-scores ... --verifier-run` of the same run; its ``objects`` and ``verify``
columns, cross-fitted log-odds, are read at 0.)
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from workzone.evaluation.loso_table import read_oof_rows
from workzone_train.contact_sheet import box_tile, save_sheet
from workzone.verified_evidence import NONE_CLASSES
from workzone_train.verifier_tune import ImageHeights, add_judged_candidates_arguments, judged_candidates
from workzone_train.verifier_tune import p_object as object_probability

NOT_OBJECT = NONE_CLASSES  # what a candidate called so is not: none, sign_other
BINS = (0, 16, 24, 32, 48, 64, 96)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_judged_candidates_arguments(ap)
    ap.add_argument("--source", default="WMaia9-workzone")
    ap.add_argument("--sheet", type=Path, help="contact sheet of the best candidate of each image the verifier lost")
    args = ap.parse_args()

    items, probs = judged_candidates(args.data, args.detections, args.verifier_run, args.hand_labels)
    height_px = ImageHeights()

    def p_object(i: int) -> float:
        return object_probability(probs[i])

    # 1. Labelled candidates by height.
    table: dict[tuple[bool, int], list[float]] = defaultdict(list)
    for i, it in enumerate(items):
        if it.kind != "candidate" or i not in probs or it.label == "":
            continue
        b = int(np.digitize(height_px(it), BINS)) - 1
        table[(it.label not in NOT_OBJECT, b)].append(p_object(i))
    print("## Labelled candidates by height: out-of-fold P(work-zone object)\n")
    print("| height (px) | positives | median P | share >= 0.5 | negatives | median P | share >= 0.5 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for b, lo in enumerate(BINS):
        hi = f"{BINS[b + 1]}" if b + 1 < len(BINS) else ""
        cells = []
        for pos in (True, False):
            v = np.array(table[(pos, b)])
            cells += [f"{len(v):,}", f"{np.median(v):.2f}" if len(v) else "-", f"{np.mean(v >= 0.5):.2f}" if len(v) else "-"]
        print(f"| {lo}-{hi} | " + " | ".join(cells) + " |")

    # 2. The source's road-work images that the object decision calls yes and the verified decision no.
    rows = [r for r in read_oof_rows(args.scores) if r.source == args.source and r.label == 1]
    by_image: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if it.kind == "candidate" and i in probs and it.det_class not in NOT_OBJECT:
            by_image[it.key].append(i)

    def best(key: str) -> int | None:
        cands = by_image.get(key, [])
        return max(cands, key=lambda i: items[i].det_score) if cands else None

    groups = {"objects yes, verified no": [], "both yes": []}
    for r in rows:
        o, v = r.scores.get("objects"), r.scores.get("verify")
        if o is not None and v is not None and o > 0:
            groups["objects yes, verified no" if v <= 0 else "both yes"].append(r.key)
    print(f"\n## {args.source}: road-work images the object decision finds, by the verified decision's answer\n")
    print("| images | n | best candidate's height, median px | its detector score, median | its verifier P(object), median |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, keys in groups.items():
        b = [best(k) for k in keys]
        b = [i for i in b if i is not None]
        h = [height_px(items[i]) for i in b]
        print(f"| {name} | {len(keys)} | {np.median(h):.0f} | {np.median([items[i].det_score for i in b]):.2f} | "
              f"{np.median([p_object(i) for i in b]):.2f} |")

    if args.sheet is not None:
        tiles = []
        for key in groups["objects yes, verified no"]:
            i = best(key)
            if i is not None:
                it = items[i]
                tiles.append(box_tile(it.path, it.box, f"{it.det_class[:5]} d{it.det_score:.2f} v{p_object(i):.2f}"))
        save_sheet(tiles, args.sheet, cols=6)
        print(f"\n{len(tiles)} tiles -> {args.sheet}")


if __name__ == "__main__":
    main()
