"""The whole cascade out of fold: fusion *and* exit thresholds fitted without the fold they score.

``loso-table``'s candidates pool stages at the last tier, which says nothing of the early exits: an image
that leaves after a cheap tier is decided by that tier's fusion alone, at a threshold that ``workzone tune``
chose on the very images it is then scored on. Here each fold's images go through a pipeline tuned
(:func:`workzone.tuning.tune_scores`, the code ``workzone tune --scores`` runs) on the *other* folds'
out-of-fold scores: its fusions and its exits. So the pooled numbers are those of the shipped cascade,
early exits included, on sources it never saw, with how many images left at each tier and what they cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from workzone.config.schema import PipelineConfig
from workzone.evaluation.loso_table import OofRow
from workzone.tuning import replay_cascade, tune_scores

__all__ = ["CascadeOof", "cascade_log_odds", "cross_fitted_cascade"]


@dataclass(frozen=True)
class CascadeOof:
    """Per image: the log-odds it left with, the tier it left at (0-based) and what it cost (ms)."""

    log_odds: np.ndarray
    exit_tier: np.ndarray
    cost_ms: np.ndarray

    def exit_rates(self, tiers: int) -> list[float]:
        return [float(np.mean(self.exit_tier == k)) for k in range(tiers)]


def cascade_log_odds(config: PipelineConfig, scores: Sequence[dict[str, float | None]]) -> CascadeOof:
    """Replay ``config``'s fusions and exits on precomputed stage scores (every stage scored on every image)."""
    final, tier_of, cost = replay_cascade(config, list(scores))
    p = np.clip(final, 1e-15, 1 - 1e-15)  # fused log-odds are within +-30, whose probabilities this keeps apart
    return CascadeOof(np.log(p) - np.log1p(-p), tier_of, cost)


def cross_fitted_cascade(config: PipelineConfig, rows: Sequence[OofRow], *, max_cost: float | None = None,
                         l2: float = 1e-2, balanced: bool = True, prior_weight: float = 1.0,
                         exits_out_of_fold: bool = True) -> CascadeOof:
    """Each fold scored by ``config`` tuned on the other folds (fusions and exits; the stage costs are the
    pipeline's ``cost:``). With ``exits_out_of_fold`` (what ``workzone tune --scores`` does by default) the
    exits are themselves chosen out of fold within those other folds.

    Raises:
        workzone.errors.ConfigError: a stage has no cost or no score column (as ``tune`` would).
    """
    latency = {s.name: float(s.cost or 0.0) for t in config.tiers for s in t.stages}
    folds = sorted({r.fold for r in rows})
    z, tier_of, cost = np.zeros(len(rows)), np.zeros(len(rows), int), np.zeros(len(rows))
    for fold in folds:
        train = [r for r in rows if r.fold != fold]
        test = np.array([r.fold == fold for r in rows])
        tuned = tune_scores(config, [r.scores for r in train], [r.label for r in train], latency,
                            max_cost=max_cost, l2=l2, balanced=balanced, prior_weight=prior_weight,
                            folds=[r.fold for r in train] if exits_out_of_fold else None,
                            contributions=False).config
        got = cascade_log_odds(tuned, [r.scores for r, t in zip(rows, test) if t])
        z[test], tier_of[test], cost[test] = got.log_odds, got.exit_tier, got.cost_ms
    return CascadeOof(z, tier_of, cost)
