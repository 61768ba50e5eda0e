"""Exit thresholds that maximise MCC under a cost budget.

Given every image's fused probability after each tier (from a run with no early exit), choose for
each tier but the last a lower and an upper exit threshold. An image leaves at the first tier whose
probability is <= lower or >= upper and is labelled road work when that probability is > 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workzone.errors import ConfigError
from workzone.evaluation.metrics import matthews_corrcoef
from workzone.fusion.rules import leaves
from workzone.types import is_road_work

__all__ = ["CascadeSimulation", "simulate_cascade", "tune_exit_thresholds", "walk_cascade"]

# Candidate thresholds: "never exit" plus a grid dense near the extremes, where confident exits live.
_LOWER = [None] + [0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
_UPPER = [None] + [0.99, 0.98, 0.97, 0.95, 0.93, 0.9, 0.87, 0.84, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5]


@dataclass(frozen=True)
class CascadeSimulation:
    mcc: float
    cost: float
    exit_rates: tuple[float, ...]
    predictions: np.ndarray
    log_loss: float


def walk_cascade(probs: np.ndarray, tier_costs: np.ndarray, thresholds: list[tuple[float | None, float | None]]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image's way through the cascade: the probability it leaves with, the tier it leaves at (0-based)
    and what the tiers it ran cost.

    Args:
        probs: shape (tiers, n): fused probability of each image after each tier.
        tier_costs: shape (tiers,): cost per image of running each tier.
        thresholds: (lower, upper) for every tier but the last; None = never exit that way.
    """
    t, n = probs.shape
    active = np.ones(n, dtype=bool)
    final, tier_of, cost = np.zeros(n), np.full(n, t - 1), np.zeros(n)
    for k in range(t):
        cost[active] += tier_costs[k]
        leave = active.copy() if k == t - 1 else active & leaves(probs[k], *thresholds[k])
        final[leave], tier_of[leave] = probs[k][leave], k
        active &= ~leave
    return final, tier_of, cost


def simulate_cascade(probs: np.ndarray, labels: np.ndarray, tier_costs: np.ndarray,
                     thresholds: list[tuple[float | None, float | None]]) -> CascadeSimulation:
    """Replay the cascade's exit rule on precomputed probabilities.

    Args:
        probs: shape (tiers, n): fused probability of each image after each tier.
        labels: shape (n,), in {0, 1}.
        tier_costs: shape (tiers,): cost per image of running each tier.
        thresholds: (lower, upper) for every tier but the last; None = never exit that way.
    """
    final, tier_of, cost = walk_cascade(probs, tier_costs, thresholds)
    n = probs.shape[1]
    rates = [float(np.sum(tier_of == k)) / n for k in range(probs.shape[0])]
    pred = is_road_work(final).astype(int)
    pc = np.clip(final, 1e-6, 1 - 1e-6)
    loss = float(-np.mean(labels * np.log(pc) + (1 - labels) * np.log(1 - pc)))
    return CascadeSimulation(matthews_corrcoef(labels, pred), float(cost.mean()), tuple(rates), pred, loss)


def tune_exit_thresholds(probs: np.ndarray, labels: np.ndarray, tier_costs: np.ndarray,
                         max_cost: float | None = None, sweeps: int = 3,
                         may_exit: tuple[bool, ...] | None = None) -> tuple[list[tuple[float | None, float | None]], CascadeSimulation]:
    """Coordinate search for the thresholds with the best MCC whose mean cost is within ``max_cost``.

    Without a budget, among settings with equal MCC the cheaper wins, so confident images leave as
    early as the data allows. With a budget, ties in MCC are broken by the lower log loss of the final
    probabilities (then by cost): the budget is spent on better-calibrated answers for the images
    the early tiers are least sure of, not left unused.

    ``may_exit`` (one flag per non-final tier; default all) names the tiers images may leave after; the
    others keep (None, None).

    Returns:
        The thresholds per non-final tier and the simulation of the chosen setting.

    Raises:
        ValueError: not even the cheapest setting meets ``max_cost``.
    """
    t = probs.shape[0]
    if t == 1:
        return [], simulate_cascade(probs, labels, tier_costs, [])
    allowed = tuple(may_exit) if may_exit is not None else (True,) * (t - 1)
    if len(allowed) != t - 1:
        raise ValueError(f"may_exit names {len(allowed)} tiers; the cascade has {t - 1} before its last")
    # Start from the cheapest setting (everything exits after the first tier it may leave), then improve tier by tier.
    current: list[tuple[float | None, float | None]] = [(0.5, 0.5) if a else (None, None) for a in allowed]
    best = simulate_cascade(probs, labels, tier_costs, current)
    if max_cost is not None and best.cost > max_cost + 1e-9:
        raise ConfigError(
            f"max_cost: the cheapest cascade (every image leaves at the first tier it may) costs {best.cost:.1f} ms per image, "
            f"over the budget of {max_cost:.1f}; raise --max-cost or make tier 1 cheaper (costs are measured on "
            "this machine, so a busy machine measures higher)"
        )

    def better(a: CascadeSimulation, b: CascadeSimulation) -> bool:
        if max_cost is not None and a.cost > max_cost + 1e-9:
            return False
        if abs(a.mcc - b.mcc) > 1e-12:
            return a.mcc > b.mcc
        if max_cost is not None and abs(a.log_loss - b.log_loss) > 1e-9:
            return a.log_loss < b.log_loss
        return a.cost < b.cost - 1e-9

    for _ in range(sweeps):
        changed = False
        for k in (k for k in range(t - 1) if allowed[k]):
            for lo in _LOWER:
                for hi in _UPPER:
                    trial = list(current)
                    trial[k] = (lo, hi)
                    sim = simulate_cascade(probs, labels, tier_costs, trial)
                    if better(sim, best):
                        best, current, changed = sim, trial, True
        if not changed:
            break
    return current, best
