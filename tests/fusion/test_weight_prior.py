"""Fusion fitted with a weight prior keeps rare but decisive stages near their calibrated weight."""

from __future__ import annotations

import numpy as np

from workzone.fusion.calibration import fit_logistic


def _data():
    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random(n) < 0.5).astype(int)
    common = np.where(y == 1, 1.5, -1.5) + rng.normal(0, 1.5, n)
    rare = np.zeros(n)
    rare[np.flatnonzero(y == 1)[:4]] = 3.0  # a lexicon phrase read on four road-work images only
    return np.stack([common, rare], 1), y


def test_ridge_towards_zero_drowns_a_rare_stage_and_a_prior_of_one_keeps_it() -> None:
    x, y = _data()
    plain = fit_logistic(x, y, l2=0.05)
    prior = fit_logistic(x, y, l2=0.05, prior=1.0)
    assert plain.weights[1] < 0.5
    assert prior.weights[1] > 0.8
    # With the prior, the rare evidence alone lifts a neutral image past 0.5.
    assert prior.bias + prior.weights[1] * 3.0 > 0


def test_prior_zero_is_plain_ridge() -> None:
    x, y = _data()
    a, b = fit_logistic(x, y, l2=0.01), fit_logistic(x, y, l2=0.01, prior=0.0)
    assert np.allclose(a.weights, b.weights) and a.bias == b.bias
