"""Average the out-of-fold crop probabilities of several `verifier-loso` runs into one run directory.

The result reads like a single run (``{fold}-probs.npz`` plus the first member's json files), so
`workzone train loso-scores --verifier-run OUT` scores the ensemble of the members exactly as it scores one
model: each candidate's probability is the mean of the members' fold models, none of which saw its source.
All members must come from the same crop pack (their ``owner`` arrays are checked to be equal).

Usage: python lab/scripts/verifier_ensemble.py --out runs/ens_a runs/vrun1 runs/m5b [runs/m5 ...]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np


def average_runs(members: list[Path], out: Path) -> list[str]:
    folds = sorted(p.name.removesuffix("-probs.npz") for p in members[0].glob("*-probs.npz"))
    if not folds:
        raise SystemExit(f"no *-probs.npz in {members[0]}: is it a `verifier-loso` run?")
    out.mkdir(parents=True, exist_ok=True)
    for fold in folds:
        packs = [np.load(m / f"{fold}-probs.npz") for m in members]
        for m, z in zip(members[1:], packs[1:]):
            if not np.array_equal(z["owner"], packs[0]["owner"]):
                raise SystemExit(f"{m}: fold {fold} holds other candidates than {members[0]} (another crop pack?)")
        mean = np.mean([z["probs"].astype(np.float32) for z in packs], axis=0)
        np.savez(out / f"{fold}-probs.npz", owner=packs[0]["owner"], probs=mean.astype(np.float16))
    for meta in members[0].glob("*.json"):
        if not meta.name.startswith("table"):
            shutil.copy(meta, out / meta.name)
    return folds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("members", nargs="+", type=Path, help="verifier-loso run directories (same crop pack)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    folds = average_runs(args.members, args.out)
    print(f"{args.out}: mean of {len(args.members)} runs over folds {', '.join(folds)}")


if __name__ == "__main__":
    main()
