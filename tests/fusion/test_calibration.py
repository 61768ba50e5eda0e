import numpy as np
import pytest

from workzone.config.schema import FusionParams
from workzone.fusion.calibration import fit_fusion, fit_logistic, fused_log_odds
from workzone.fusion.pooling import pool_log_odds


def synthetic(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    a, b, noise = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    z = -0.5 + 1.5 * a + 0.5 * b
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return a, b, noise, y


def test_logistic_recovers_known_weights():
    a, b, noise, y = synthetic()
    fit = fit_logistic(np.c_[a, b, noise], y, l2=0.0)
    assert fit.bias == pytest.approx(-0.5, abs=0.12)
    assert fit.weights[0] == pytest.approx(1.5, abs=0.15)
    assert fit.weights[1] == pytest.approx(0.5, abs=0.1)
    assert abs(fit.weights[2]) < 0.1  # the useless stage gets ~0 weight


def test_l2_shrinks_weights():
    a, b, noise, y = synthetic()
    free = fit_logistic(np.c_[a, b], y, l2=0.0)
    tight = fit_logistic(np.c_[a, b], y, l2=1.0)
    assert np.all(np.abs(tight.weights) < np.abs(free.weights))


def test_fit_rejects_one_class_and_bad_shapes():
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(np.zeros((5, 1)), np.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        fit_logistic(np.zeros(5), np.zeros(5))


def test_fit_fusion_gives_calibrated_probabilities():
    a, b, noise, y = synthetic(8000, seed=1)
    scores = [{"a": float(x), "b": float(v), "dead": None} for x, v in zip(a, b)]
    fus = fit_fusion(scores, y, ["a", "b", "dead"], l2=0.0)
    assert fus.fitted and set(fus.weights) == {"a", "b", "dead"}
    p = 1 / (1 + np.exp(-fused_log_odds(scores, fus)))
    # Calibration: in each probability bin, the observed rate matches the mean prediction.
    for lo in (0.1, 0.3, 0.5, 0.7):
        m = (p >= lo) & (p < lo + 0.2)
        assert abs(y[m].mean() - p[m].mean()) < 0.05


def test_pooling_ignores_abstentions_and_clips():
    f = FusionParams(bias=1.0, weights={"a": 2.0, "b": 1.0}, fitted=True)
    assert pool_log_odds({"a": 1.0, "b": None}, f) == 3.0
    assert pool_log_odds({"a": 1e9}, f) == 30.0
    assert pool_log_odds({}, FusionParams()) == 0.0


def test_balanced_fit_shifts_the_bias_by_the_prior_log_ratio():
    # Logistic regression with class weights moves the intercept by log(n_neg / n_pos) and keeps the
    # slopes (for a well-specified model): the fused probabilities then assume a 50/50 prior.
    rng = np.random.default_rng(3)
    n = 20000
    x = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(-2.0 + 1.5 * x)))).astype(int)
    plain = fit_logistic(x[:, None], y, l2=0.0)
    bal = fit_logistic(x[:, None], y, l2=0.0, balanced=True)
    prior_shift = np.log((n - y.sum()) / y.sum())
    assert y.mean() < 0.3  # an imbalanced set, so the shift is large
    assert bal.bias - plain.bias == pytest.approx(prior_shift, abs=0.1)
    assert bal.weights[0] == pytest.approx(plain.weights[0], abs=0.1)
    # Balanced probabilities average ~0.5 per class-weighted sample: more positives called.
    z_plain, z_bal = plain.bias + plain.weights[0] * x, bal.bias + bal.weights[0] * x
    assert (z_bal > 0).sum() > (z_plain > 0).sum()
    fus = fit_fusion([{"a": float(v)} for v in x], y, ["a"], l2=0.0, balanced=True)
    assert fus.bias == pytest.approx(bal.bias, abs=1e-5)


def test_fit_stays_finite_when_newton_would_overshoot() -> None:
    """Two correlated stage scores of large magnitude with a weight prior of 1 (as the LOSO table fits fusion):
    plain Newton steps overshoot and the unpenalised bias ran off to 5e8 (seen on one leave-one-source-out fold,
    which then called every held-out positive negative). With step halving the fit is finite and separates."""
    from workzone.fusion.calibration import fit_logistic

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(1700), np.ones(440)].astype(int)
    a = 2.0 * np.where(y == 1, rng.normal(2.0, 1.5, y.size), rng.normal(-1.5, 1.2, y.size))
    b = 2.0 * np.where(y == 1, rng.normal(2.5, 2.5, y.size), rng.normal(-2.5, 2.8, y.size)) + 0.8 * a
    fit = fit_logistic(np.c_[a, b], y, l2=1e-2, balanced=True, prior=1.0)
    assert np.isfinite(fit.bias) and abs(fit.bias) < 10 and np.all(np.abs(fit.weights) < 10)
    z = fit.bias + np.c_[a, b] @ fit.weights
    assert ((z > 0) == (y == 1)).mean() > 0.9
