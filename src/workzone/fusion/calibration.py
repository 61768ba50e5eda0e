"""Fitting fusion weights: L2-regularised logistic regression on stage log-odds.

Logistic regression on log-odds is Platt scaling generalised to several stages, so the fused
probability is calibrated on the data it was fitted on. Implemented with Newton's method (IRLS)
in numpy: the default install needs no scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workzone.config.schema import FusionParams
from workzone.types import sigmoid

__all__ = ["LogisticFit", "fit_logistic", "fit_fusion", "fused_log_odds"]


@dataclass(frozen=True)
class LogisticFit:
    """A fitted model ``z = bias + X @ weights``."""

    bias: float
    weights: np.ndarray
    log_loss: float
    iterations: int


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, max_iter: int = 100, tol: float = 1e-8,
                 *, balanced: bool = False, prior: np.ndarray | float = 0.0) -> LogisticFit:
    """Fit an L2-regularised logistic regression (the bias is not penalised).

    Args:
        x: features, shape (n, d).
        y: labels in {0, 1}, shape (n,).
        l2: ridge penalty on the weights (scaled by n, so it is comparable across data sizes).
        balanced: weight the classes equally (each class's samples sum to n/2), so that the fitted
            probabilities assume a 50/50 prior instead of the fitting set's class mix.
        prior: the weights the penalty shrinks towards (scalar or (d,)). 0 is plain ridge. For
            fusion over stages that already give calibrated log-odds, 1 says "trust each stage as
            it is unless the data disagree": a stage that fires on a handful of images (a road-work
            phrase read on a sign) then keeps a weight near 1, where ridge towards 0 would drown it.

    Returns:
        The fit, with its mean log loss on ``x``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(2000, 1)); y = (rng.random(2000) < 1 / (1 + np.exp(-(2 * x[:, 0] - 1)))).astype(int)
        >>> fit = fit_logistic(x, y, l2=0.0)
        >>> round(float(fit.weights[0]), 1), round(fit.bias, 1)
        (2.0, -1.0)
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x of shape (n, d) and y of shape (n,), got {x.shape} and {y.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError("fitting fusion needs both classes in the labels")
    n, d = x.shape
    sw = np.ones(n)
    if balanced:
        pos = y.sum()
        sw = np.where(y == 1, n / (2 * pos), n / (2 * (n - pos)))
    a = np.hstack([np.ones((n, 1)), x])
    pen = np.full(d + 1, l2 * n)
    pen[0] = 0.0
    centre = np.concatenate([[0.0], np.broadcast_to(np.asarray(prior, np.float64), (d,))])
    beta = centre.copy()

    def objective(b: np.ndarray) -> float:
        z = a @ b
        # log(1 + e^z) - y z, computed without overflow
        return float(np.sum(sw * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(pen * (b - centre) ** 2))

    it = 0
    current = objective(beta)
    for it in range(1, max_iter + 1):
        z = np.clip(a @ beta, -35, 35)
        p = sigmoid(z)
        w = sw * p * (1 - p) + 1e-9
        grad = a.T @ (sw * (p - y)) + pen * (beta - centre)
        hess = (a * w[:, None]).T @ a + np.diag(pen) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        # Newton with step halving: on (nearly) separable data a full step can overshoot without end (an
        # unpenalised bias once ran off to -5e8 on one leave-one-source-out fold); a step is taken only
        # while it lowers the penalised loss.
        scale = 1.0
        while scale > 1e-10:
            trial = beta - scale * step
            value = objective(trial)
            if value <= current + 1e-12:
                break
            scale *= 0.5
        else:
            break
        beta, current = trial, value
        if np.max(np.abs(scale * step)) < tol:
            break
    z = np.clip(a @ beta, -35, 35)
    p = np.clip(sigmoid(z), 1e-12, 1 - 1e-12)
    loss = float(-np.mean(sw * (y * np.log(p) + (1 - y) * np.log(1 - p))))
    return LogisticFit(float(beta[0]), beta[1:].copy(), loss, it)


def score_matrix(scores: list[dict[str, float | None]], names: list[str]) -> np.ndarray:
    """Stage scores as a matrix (n, len(names)); a missing or abstaining stage is 0 (no evidence)."""
    return np.array([[float(s.get(k) or 0.0) for k in names] for s in scores], dtype=np.float64).reshape(len(scores), len(names))


def fit_fusion(scores: list[dict[str, float | None]], labels: np.ndarray, names: list[str], l2: float = 1e-2,
               *, balanced: bool = False, prior_weight: float = 0.0) -> FusionParams:
    """Fit one tier's fusion over the stages ``names`` (all stages of this tier and earlier ones).

    ``balanced`` fits for a 50/50 prior and ``prior_weight`` is the weight the penalty shrinks
    towards (see :func:`fit_logistic`).
    """
    fit = fit_logistic(score_matrix(scores, names), labels, l2=l2, balanced=balanced, prior=prior_weight)
    return FusionParams(bias=round(fit.bias, 6), weights={k: round(float(w), 6) for k, w in zip(names, fit.weights)},
                        fitted=True)


def fused_log_odds(scores: list[dict[str, float | None]], fusion: FusionParams) -> np.ndarray:
    """Vectorised :func:`workzone.fusion.pool_log_odds` over many images."""
    from workzone.fusion.pooling import pool_log_odds

    return np.array([pool_log_odds(s, fusion) for s in scores], dtype=np.float64)
