"""Do proposals at full resolution reach what the whole-image pass misses? A markdown table per source.

For each source: the share of road-work images with a work-zone box (any class but `sign_other`) scored at least
T by the whole-image pass, by the tiled pass (`workzone train objects-oof --tiles N`), and by either; and the same
shares on images without road work (a box there is a false proposal the verifier must reject).

    python lab/scripts/tile_reach.py runs/gpu1/oof_detections.json runs/tiles2/oof_detections.json.gz \
        --data ../shared/data --threshold 0.5
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from workzone_train.corpus import load_corpus
from workzone_train.oof_scores import read_fold_detections
from workzone_train.scene_synth import OBJECT_CLASSES

LOOKALIKE = OBJECT_CLASSES.index("sign_other")


def reaches(det: np.ndarray | None, threshold: float) -> bool:
    if det is None or not len(det):
        return False
    keep = det[:, 5] != LOOKALIKE
    return bool((det[keep, 4] >= threshold).any())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("whole", type=Path)
    ap.add_argument("tiled", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--threshold", type=float, default=0.5)
    args = ap.parse_args()
    whole, tiled = read_fold_detections(args.whole), read_fold_detections(args.tiled)
    counts: dict[tuple[str, int], np.ndarray] = defaultdict(lambda: np.zeros(4, int))  # n, whole, tiled, either
    for s in load_corpus(args.data):
        if s.key not in whole or s.key not in tiled:
            continue
        w, t = reaches(whole[s.key], args.threshold), reaches(tiled[s.key], args.threshold)
        for group in (s.sample.source, f"*{s.condition}*", "all"):
            counts[(group, s.sample.label)] += (1, w, t, w or t)
    print(f"| source | images | with a box >= {args.threshold}: whole image | tiles | either |")
    print("|---|---|---|---|---|")
    order = sorted(counts.items(), key=lambda kv: (kv[0][0] == "all", kv[0][0].startswith("*"), kv[0]))
    for (group, label), (n, w, t, e) in order:
        kind = "road work" if label else "none"
        print(f"| {group} ({kind}) | {n} | {w / n:.2f} | {t / n:.2f} | {e / n:.2f} |")


if __name__ == "__main__":
    main()
