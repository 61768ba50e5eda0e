"""How a verifier run judged the candidates a person named: out of fold, by source, kind and height.

The hand labels (`lab/labels/candidate_labels.csv`) name candidates on road-work images that no source boxed. A
verifier run that did not train on them (the shipped one, `runs/vrun1`) can be scored on them: for each fold's
candidates, the share its fold model accepts (P(object) = 1 - P(none) - P(sign_other) >= 0.5), named work-zone
objects against named look-alikes, by height in the image. The first measure of the verifier on real small objects of
a camera it never saw.

Usage: python lab/scripts/verifier_on_named.py --data ../shared/data --detections runs/gpu1/oof_detections.json \
           --verifier-run runs/vrun1 --scores runs/ev-vrun1ng/oof_scores.csv --named lab/labels/candidate_labels.csv
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from workzone_train.hand_labels import label_of, read_hand_labels
from workzone.verified_evidence import NONE_CLASSES
from workzone_train.verifier_tune import ImageHeights, add_judged_candidates_arguments, judged_candidates, p_object

BANDS = ((24, "under 24 px"), (32, "24-32 px"), (64, "32-64 px"), (float("inf"), "64 px and more"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_judged_candidates_arguments(ap)
    ap.add_argument("--named", type=Path, required=True, help="hand labels the verifier run did not train on")
    args = ap.parse_args()
    items, probs = judged_candidates(args.data, args.detections, args.verifier_run, args.hand_labels)
    named = read_hand_labels(args.named)
    height_px = ImageHeights()
    counts: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for i, it in enumerate(items):
        label = label_of(named, it.key, it.box) if it.kind == "candidate" and it.label == "" and i in probs else ""
        if not label:
            continue
        h = height_px(it)
        band = next(k for k, (top, _) in enumerate(BANDS) if h < top)
        kind = "look-alike" if label in NONE_CLASSES else "work-zone object"
        c = counts[(it.source, kind, band)]
        c[0] += 1
        c[1] += int(p_object(probs[i]) >= 0.5)
    print("| source | named | " + " | ".join(name for _, name in BANDS) + " |")
    print("| --- | --- |" + " ---: |" * len(BANDS))
    for source, kind in sorted({(s, k) for s, k, _ in counts}):
        cells = []
        for b in range(len(BANDS)):
            n, accepted = counts.get((source, kind, b), (0, 0))
            cells.append(f"{accepted / n:.2f} (n {n})" if n else "-")
        print(f"| {source} | {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
