"""Cost-aware router vs the fixed order, on out-of-fold stage scores of the default pipeline.

Usage:
    python benchmarks/router_vs_fixed.py [--manifest ../shared/data/roadwork-v1/manifest.csv] [--split dev]
        [--folds 5] [--out benchmarks/results/router_vs_fixed.md] [--cache runs/router_scores.json]

Protocol (written into the results file):
1. The default pipeline runs every stage on every image of the split (``run_all``): the tier-1
   classifier and tier 2's mirror-TTA classifier, cone detector and sign OCR. Costs are the
   pipeline's declared per-stage ms (measured by ``workzone tune`` on this machine class).
2. Stratified K-fold (seed 0). In each training fold: the two tiers' fusions are refitted
   (class-balanced, as the default is) and, for the router, :func:`workzone.routing.fit_router`
   picks per band of the tier-1 log-odds (band edges: the quartiles of the training fold's
   undecided images) the subset of tier-2 stages worth its cost at trade-off ``lam``. The held-out
   fold is then decided: tier-1 exits by the thresholds of the row, the rest by tier 2 with every
   stage (fixed order) or with the router's stages (the others abstain, as in the cascade).
3. Pooled out-of-fold MCC (p > 0.5) and mean declared cost per image, for a grid of tier-1 exit
   thresholds x ``lam`` (the fixed order also on a finer asymmetric grid of exits, since a router
   keyed on the tier-1 log-odds alone can act like a moved exit). "Same budget": for each
   fixed-order row, the best router row whose mean cost is not above it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from _machine import describe_machine  # noqa: E402

from workzone.evaluation.metrics import matthews_corrcoef  # noqa: E402
from workzone.fusion.calibration import fit_fusion, fused_log_odds  # noqa: E402
from workzone.routing import choose_stages, fit_router, route_state  # noqa: E402

TIER1 = ["classifier"]
TIER2 = ["tta", "cones", "signs"]
EXITS = [(0.02, 0.98), (0.05, 0.95), (0.07, 0.84), (0.1, 0.9), (0.15, 0.8), (0.25, 0.7), (0.4, 0.6), (0.5, 0.5)]
LAMS = [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
# The fixed order also gets a finer, asymmetric grid of exits: a router whose only state is the
# tier-1 log-odds can act like a moved exit, and that must not count as a routing gain.
FIXED_EXITS = EXITS + [(lo, hi) for lo in (0.1, 0.15, 0.2, 0.25, 0.3) for hi in (0.8, 0.85, 0.9, 0.95)
                       if (lo, hi) not in EXITS]


def collect(manifest: str, split: str, cache: Path) -> tuple[list[dict], np.ndarray, dict[str, float]]:
    if cache.exists():
        d = json.loads(cache.read_text())
        return d["scores"], np.array(d["labels"]), d["costs"]
    from workzone.api import load_pipeline
    from workzone.evaluation.runner import run_manifest
    from workzone.io.sources import read_manifest

    rows = read_manifest(manifest, splits=[split])
    with load_pipeline("default") as pipe:
        res = run_manifest(pipe, rows, run_all=True)
        costs = {s.name: float(s.cost or 0.0) for t in pipe.config.tiers for s in t.stages}
    ok = [i for i, d in enumerate(res.decisions) if d is not None]
    scores = [{s.stage: s.log_odds for s in res.decisions[i].stages} for i in ok]
    labels = [int(rows[i].label) for i in ok]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"scores": scores, "labels": labels, "costs": costs}))
    return scores, np.array(labels), costs


def folds_of(y: np.ndarray, k: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    fold = np.zeros(len(y), int)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % k
    return fold


def fitted_rules(scores: list[dict], y: np.ndarray, costs: dict[str, float], lo: float, hi: float, lam: float):
    """The router fitted on ``scores`` for the images tier 1 leaves undecided (None when there are none)."""
    f1 = fit_fusion(scores, y, TIER1, balanced=True)
    f2 = fit_fusion(scores, y, TIER1 + TIER2, balanced=True)
    z1 = fused_log_odds(scores, f1)
    p1 = 1 / (1 + np.exp(-z1))
    und = np.flatnonzero((p1 > lo) & (p1 < hi))
    if not len(und):
        return None
    s_und = [scores[i] for i in und]
    base = fused_log_odds([{n: s.get(n) for n in TIER1} for s in s_und], f2)
    contrib = {n: np.array([f2.weights[n] * (s.get(n) or 0.0) for s in s_und]) for n in TIER2}
    edges = sorted(set(np.round(np.quantile(z1[und], [0.25, 0.5, 0.75]), 4).tolist()))
    return fit_router(z1[und], base, contrib, y[und], {n: costs[n] for n in TIER2}, lam=lam, edges=edges,
                      n_total=len(y))


def evaluate(scores: list[dict], y: np.ndarray, costs: dict[str, float], k: int, lo: float, hi: float,
             lam: float | None) -> tuple[float, float]:
    """Pooled out-of-fold (MCC, mean cost) of one configuration (lam None: the fixed order)."""
    fold = folds_of(y, k)
    pred = np.zeros(len(y), int)
    cost = np.zeros(len(y))
    for f in range(k):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        s_tr = [scores[i] for i in tr]
        f1 = fit_fusion(s_tr, y[tr], TIER1, balanced=True)
        f2 = fit_fusion(s_tr, y[tr], TIER1 + TIER2, balanced=True)
        router = None if lam is None else fitted_rules(s_tr, y[tr], costs, lo, hi, lam)
        for i in te:
            s = scores[i]
            z1 = fused_log_odds([s], f1)[0]
            p1 = 1 / (1 + np.exp(-z1))
            cost[i] = sum(costs[n] for n in TIER1)
            if p1 <= lo or p1 >= hi:
                pred[i] = int(p1 > 0.5)
                continue
            run = TIER2 if router is None else list(choose_stages(router, route_state(z1, []), TIER2)[0])
            cost[i] += sum(costs[n] for n in run)
            z2 = fused_log_odds([{n: s.get(n) for n in TIER1 + run}], f2)[0]
            pred[i] = int(z2 > 0)
    return matthews_corrcoef(y, pred), float(cost.mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", default=str(ROOT.parent / "shared" / "data" / "roadwork-v1" / "manifest.csv"))
    ap.add_argument("--split", default="dev")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "router_vs_fixed.md"))
    ap.add_argument("--cache", default=str(ROOT / "runs" / "router_scores.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    cached = Path(args.cache).exists()
    scores, y, costs = collect(args.manifest, args.split, Path(args.cache))
    fixed = {(lo, hi): evaluate(scores, y, costs, args.folds, lo, hi, None) for lo, hi in FIXED_EXITS}
    routed = {(lo, hi, lam): evaluate(scores, y, costs, args.folds, lo, hi, lam) for lo, hi in EXITS for lam in LAMS}
    rows_fixed, rows_same = [], []
    wins = 0
    for (lo, hi), (mcc, c) in fixed.items():
        rows_fixed.append(f"| {lo} / {hi} | {mcc:.3f} | {c:.1f} |")
        ok = [(m, cc, key) for key, (m, cc) in routed.items() if cc <= c + 1e-9]
        m, cc, key = max(ok, key=lambda t: (t[0], -t[1]))
        wins += m > mcc + 1e-9
        rows_same.append(f"| {lo} / {hi} | {mcc:.3f} | {c:.1f} | {m:.3f} | {cc:.1f} | exits {key[0]} / {key[1]}, "
                         f"lam {key[2]:g} | {m - mcc:+.3f} |")
    best_fixed = max(fixed.items(), key=lambda kv: (kv[1][0], -kv[1][1]))
    cheaper = [(m, c, k) for k, (m, c) in routed.items() if m >= best_fixed[1][0] - 1e-9 and c < best_fixed[1][1]]
    verdict = (f"The router reaches the best fixed-order MCC ({best_fixed[1][0]:.3f} at {best_fixed[1][1]:.1f} ms) at "
               f"{min(c for _, c, _ in cheaper):.1f} ms." if cheaper else
               f"No router row reaches the best fixed-order MCC ({best_fixed[1][0]:.3f} at {best_fixed[1][1]:.1f} ms) "
               "at a lower cost.")
    example = fitted_rules(scores, y, costs, 0.1, 0.9, 0.0)
    md = "\n".join([
        "# Cost-aware router vs the fixed order (out-of-fold, default pipeline)",
        "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {describe_machine()}",
        f"- data: split `{args.split}` of `{Path(args.manifest).parent.name}`, {len(y)} images ({int(y.sum())} road work)",
        f"- command: `python benchmarks/router_vs_fixed.py --split {args.split} --folds {args.folds}` "
        f"({time.perf_counter() - t0:.0f} s{' with cached scores' if cached else ', scores collected in this run'})",
        f"- declared stage costs (ms / image): {', '.join(f'{k} {v:g}' for k, v in costs.items())}",
        "",
        __doc__.split("Protocol (written into the results file):")[1].strip(),
        "",
        "## Verdict",
        "",
        f"{verdict} At the same budget the router beats the fixed order in {wins} of {len(fixed)} exit settings "
        "(table below). The fixed order stays the default unless a row shows a clear gain.",
        "",
        "Reading: in the default pipeline the router's only informative state is the tier-1 log-odds (tier 1 has "
        "one stage, so nothing can disagree, and no text has been read yet), so its bands act like moved exit "
        "thresholds plus a choice of tier-2 stages; the finer fixed grid shows how much of the saving a moved exit "
        "alone gives. On 469 images an MCC step of about 0.005 is one image.",
        "",
        "## Same budget: fixed order vs the best router configuration not costing more",
        "",
        "| tier-1 exits (lower / upper) | fixed MCC | fixed ms | router MCC | router ms | router configuration | delta MCC |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows_same,
        "",
        "## What the router does (rules fitted on the whole split, exits 0.1 / 0.9, lam 0)",
        "",
        *(f"- z in [{r.z[0]:g}, {r.z[1]:g}): run {', '.join(r.stages) or 'no stage'} ({r.reason})" for r in example.rules),
        "",
        "## Every router configuration",
        "",
        "| tier-1 exits | " + " | ".join(f"lam {lam:g}" for lam in LAMS) + " |",
        "| --- | " + " | ".join("---" for _ in LAMS) + " |",
        *(f"| {lo} / {hi} | " + " | ".join(f"{routed[(lo, hi, lam)][0]:.3f} @ {routed[(lo, hi, lam)][1]:.1f} ms"
                                           for lam in LAMS) + " |" for lo, hi in EXITS),
        "",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
