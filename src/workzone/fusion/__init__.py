"""Learned fusion of stage scores: pooling, fitting, exit thresholds."""

from workzone.fusion.pooling import pool_log_odds

__all__ = ["pool_log_odds"]
