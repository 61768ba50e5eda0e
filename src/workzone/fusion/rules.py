"""The cascade's rules, stated once: when an image leaves, and the prior (the label rule is
:func:`workzone.types.is_road_work`).

The cascade applies them one image at a time, the tuner replays them on arrays of probabilities,
and the miner answers with the prior when the cascade cannot answer in time.
"""

from __future__ import annotations

from typing import Any

from workzone.config.schema import ExitThresholds, FusionParams
from workzone.fusion.pooling import pool_log_odds
from workzone.types import sigmoid

__all__ = ["leaves", "leaves_tier", "prior_probability"]


def leaves(p: Any, lower: float | None, upper: float | None) -> Any:
    """Whether an image with fused probability ``p`` leaves after a tier: ``p <= lower`` or ``p >= upper``.

    Works on a float (a bool back) or an array of probabilities (a bool array back). ``None`` is
    "never exit that way".

    Examples:
        >>> leaves(0.97, 0.05, 0.95), leaves(0.5, 0.05, 0.95), leaves(0.01, None, 0.95)
        (True, False, False)
    """
    low = (p <= lower) if lower is not None else False
    high = (p >= upper) if upper is not None else False
    return low | high


def leaves_tier(p: float, exit: ExitThresholds) -> bool:
    """:func:`leaves` with a tier's exit thresholds."""
    return bool(leaves(p, exit.lower, exit.upper))


def prior_probability(fusion: FusionParams) -> float:
    """P(road work) before any stage has spoken: the first tier's fusion with no scores."""
    return float(sigmoid(pool_log_odds({}, fusion)))
