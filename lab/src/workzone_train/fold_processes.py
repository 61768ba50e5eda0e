"""One process per leave-one-source-out fold (and per seed of the full model), spread over the visible GPUs.

Why processes: each fold's training is small for one GPU (a Lite0 at 96-320 px), so several run side by side on one
card; separate processes keep their data loaders, CUDA contexts and failures apart.
"""

from __future__ import annotations

import os
import subprocess
from typing import Callable, Sequence

__all__ = ["fold_runs", "run_fold_processes"]


def fold_runs(folds: Sequence[str], which: str, seeds: str, *, fold_seed: int = 0) -> list[tuple[str, int]]:
    """(fold, seed) pairs: ``which`` is ``all`` (every fold and ``full``) or a comma list; ``full`` once per seed.

    The fold models all take ``fold_seed``: a second seed of the whole out-of-fold table (its spread, or an
    ensemble of two tables) is a second run with another ``fold_seed``.
    """
    names = list(folds) + ["full"] if which == "all" else which.split(",")
    return ([(f, fold_seed) for f in names if f != "full"]
            + [("full", int(s)) for s in seeds.split(",") if "full" in names])


def run_fold_processes(runs: Sequence[tuple[str, int]], command: Callable[[str, int], list[str]], *, gpus: int = 1
                       ) -> None:
    """Start ``command(fold, seed)`` for every run at once, the i-th on GPU ``i % gpus``, and wait for all.

    Raises:
        SystemExit: naming the runs that failed, after every run has ended.
    """
    procs = []
    for i, (fold, seed) in enumerate(runs):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(i % max(1, gpus)), OMP_NUM_THREADS="1")
        procs.append((f"{fold}-seed{seed}", subprocess.Popen(command(fold, seed), env=env)))
    failed = [name for name, p in procs if p.wait() != 0]
    if failed:
        raise SystemExit(f"folds failed: {failed}")
