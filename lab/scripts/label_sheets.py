"""Contact sheets of the detector's unlabelled candidates on road-work images, for a person to name each one.

Why: the verifier learns which candidates are work-zone objects from real boxes, and almost none of them are small
(`benchmarks/results/verifier_small_objects.md`: 38 labelled positives under 32 px against 14,369 negatives). The
road-work images of WMaia9, TraCon, QEW and the stock sources hold thousands of candidates nobody boxed; naming them
by eye (a cone, a drum, a sign, or nothing; the rules: ``lab/labels/GUIDE.md``) is the cheapest source of small real
positives, and of hard negatives inside work zones. Each candidate is shown with its context and its box outlined; the person writes one label per
tile id into a CSV, and `workzone train verifier-pack --hand-labels` folds those labels into the crop table
(:func:`workzone_train.hand_labels.read_hand_labels`).

Writes, under ``--out``: ``sheet-NNN.png`` (``--per-sheet`` tiles each, the id in each tile's corner) and
``manifest.csv`` (id, key, source, the normalised box, its height in px, the detector's class and score). The
sheets show images of ../shared and are never committed; the labels (keys, boxes, names) are.

Usage: python lab/scripts/label_sheets.py sheets --data ../shared/data --detections runs/gpu1/oof_detections.json \
           --out /tmp/label_sheets [--max-height 64]
       python lab/scripts/label_sheets.py collect --manifest /tmp/label_sheets/manifest.csv \
           --labels /tmp/label_sheets/labels-*.csv --out lab/labels/candidate_labels.csv
       python lab/scripts/label_sheets.py subset --labels lab/labels/candidate_labels.csv --keep negatives --out neg.csv
(``collect`` joins the per-person label files, ``id,label``, with the manifest's keys and boxes; ``subset`` keeps
some of the labels, for asking which of them help: negatives (none, sign_other), positives (the work-zone classes),
no-wmaia9 (all but WMaia9's images).)
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path


from workzone_train.contact_sheet import box_tile, save_sheet
from workzone.verified_evidence import NONE_CLASSES
from workzone_train.hand_labels import UNSURE, collect_hand_labels

SUBSETS = {"negatives": lambda key, label: label in NONE_CLASSES,
           "positives": lambda key, label: label not in (*NONE_CLASSES, UNSURE),
           "no-wmaia9": lambda key, label: "wmaia9" not in key.lower()}
from workzone_train.oof_scores import read_fold_detections
from workzone_train.scene_synth import OBJECT_CLASSES
from workzone_train.verifier import build_crop_table
from workzone_train.verifier_tune import ImageHeights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sh = sub.add_parser("sheets", help="write the contact sheets and their manifest")
    sh.add_argument("--data", type=Path, required=True)
    sh.add_argument("--detections", type=Path, required=True, help="out-of-fold detections (objects-loso)")
    sh.add_argument("--out", type=Path, required=True)
    sh.add_argument("--max-height", type=float, default=None, help="only candidates at most this tall (px)")
    sh.add_argument("--per-sheet", type=int, default=48)
    sh.add_argument("--cols", type=int, default=8)
    sh.add_argument("--tile", type=int, default=144)
    co = sub.add_parser("collect", help="join label files (id,label) with the manifest into the labels CSV")
    co.add_argument("--manifest", type=Path, required=True)
    co.add_argument("--labels", type=Path, nargs="+", required=True)
    co.add_argument("--out", type=Path, required=True)
    su = sub.add_parser("subset", help="keep some of a labels CSV's rows")
    su.add_argument("--labels", type=Path, required=True)
    su.add_argument("--keep", choices=sorted(SUBSETS), required=True)
    su.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.command == "subset":
        with args.labels.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        kept = [r for r in rows[1:] if SUBSETS[args.keep](r[0], r[5])]
        with args.out.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([rows[0], *kept])
        print(f"{len(kept)} of {len(rows) - 1} labels ({args.keep}) -> {args.out}")
        return
    if args.command == "collect":
        counts = collect_hand_labels(args.manifest, args.labels, args.out)
        print(f"{sum(counts.values())} labels -> {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        return
    write_sheets(args)


def write_sheets(args: argparse.Namespace) -> None:
    items = build_crop_table(args.data, read_fold_detections(args.detections), OBJECT_CLASSES)
    height_px = ImageHeights()
    picks = []
    for it in items:
        if it.kind != "candidate" or it.label != "":
            continue
        h = height_px(it)
        if args.max_height is None or h <= args.max_height:
            picks.append((it.source, it.key, it.box, h, it))
    picks.sort(key=lambda p: (p[0], p[1], p[2]))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "key", "source", "x1", "y1", "x2", "y2", "height_px", "det_class", "det_score"])
        for start in range(0, len(picks), args.per_sheet):
            sheet = start // args.per_sheet
            tiles = []
            for k, (source, key, box, h, it) in enumerate(picks[start:start + args.per_sheet]):
                tid = f"{sheet:03d}-{k:02d}"
                w.writerow([tid, key, source, *(f"{v:.5f}" for v in box), f"{h:.1f}", it.det_class,
                            f"{it.det_score:.3f}"])
                tiles.append(box_tile(it.path, box, f"{k:02d}", tile=args.tile, outline=True))
            save_sheet(tiles, args.out / f"sheet-{sheet:03d}.png", cols=args.cols)
    print(f"{len(picks)} candidates on {-(-len(picks) // args.per_sheet)} sheets -> {args.out}")


if __name__ == "__main__":
    main()
