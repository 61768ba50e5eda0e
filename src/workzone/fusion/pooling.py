"""Weighted log-odds pooling of stage evidence."""

from __future__ import annotations

import math
from typing import Mapping

from workzone.config.schema import FusionParams

__all__ = ["pool_log_odds"]

# Fused log-odds are clipped so that p stays strictly inside (0, 1) in float64 and every answer
# is finite, whatever a stage returned.
_CLIP = 30.0


def pool_log_odds(scores: Mapping[str, float | None], fusion: FusionParams) -> float:
    """Fuse stage log-odds into one log-odds.

    Fitted fusion: ``bias + sum(w[s] * z[s])`` over the stages in ``fusion.weights`` that produced a
    score (abstaining or failed stages add nothing). Unfitted fusion (no weights): the mean of the
    available scores (of ``fusion.stages`` only, when the tier names them) plus the bias, so an untuned
    pipeline still gives a sensible probability.

    Args:
        scores: stage name -> log-odds, or None when the stage abstained or failed.
        fusion: the tier's fusion parameters.

    Returns:
        The fused log-odds, clipped to [-30, 30].

    Examples:
        >>> pool_log_odds({"a": 2.0, "b": None}, FusionParams(bias=-1.0, weights={"a": 0.5, "b": 1.0}))
        0.0
        >>> pool_log_odds({"a": 2.0, "b": 4.0}, FusionParams())
        3.0
        >>> pool_log_odds({"a": 2.0, "b": 4.0}, FusionParams(stages=("b",)))
        4.0
    """
    if fusion.weights:
        z = fusion.bias + sum(w * scores[s] for s, w in fusion.weights.items() if scores.get(s) is not None)
    else:
        pooled = fusion.stages
        avail = [v for k, v in scores.items() if v is not None and (pooled is None or k in pooled)]
        z = fusion.bias + (sum(avail) / len(avail) if avail else 0.0)
    if not math.isfinite(z):
        z = 0.0
    return max(-_CLIP, min(_CLIP, z))
