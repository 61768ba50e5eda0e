import numpy as np
import pytest

from workzone.fusion.thresholds import simulate_cascade, tune_exit_thresholds


def two_tier_data(n=600, seed=0):
    """Tier 1 is right on easy images and a coin flip on hard ones; tier 2 is always right."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    hard = rng.random(n) < 0.3
    p1 = np.where(y == 1, rng.uniform(0.92, 0.99, n), rng.uniform(0.01, 0.08, n))
    p1[hard] = rng.uniform(0.35, 0.65, hard.sum())
    p2 = np.where(y == 1, 0.9, 0.1)
    return np.vstack([p1, p2]), y, hard


def test_simulation_counts_cost_and_exits():
    probs, y, hard = two_tier_data()
    sim = simulate_cascade(probs, y, np.array([1.0, 10.0]), [(0.1, 0.9)])
    assert sim.exit_rates[0] == pytest.approx(1 - hard.mean())
    assert sim.cost == pytest.approx(1 + 10 * hard.mean())
    assert sim.mcc == 1.0


def test_tuner_sends_only_the_ambiguous_images_on():
    probs, y, hard = two_tier_data()
    th, sim = tune_exit_thresholds(probs, y, np.array([1.0, 10.0]))
    assert sim.mcc == 1.0
    assert sim.exit_rates[0] == pytest.approx(1 - hard.mean())  # cheapest setting with perfect MCC
    lo, hi = th[0]
    assert 0.08 <= lo < 0.35 and 0.65 < hi <= 0.92


def test_tuner_respects_the_budget():
    probs, y, hard = two_tier_data()
    th, sim = tune_exit_thresholds(probs, y, np.array([1.0, 10.0]), max_cost=1.0)
    assert sim.cost <= 1.0 and sim.exit_rates[0] == 1.0
    assert sim.mcc < 1.0
    with pytest.raises(ValueError, match="over the budget"):
        tune_exit_thresholds(probs, y, np.array([1.0, 10.0]), max_cost=0.5)


def test_with_a_budget_ties_in_mcc_are_spent_on_calibration():
    """Tier 1 is always right but timid (p 0.3 / 0.7); tier 2 is right and confident."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p1 = np.where(y == 1, 0.7, 0.3)
    p2 = np.where(y == 1, 0.97, 0.03)
    probs = np.vstack([p1, p2])
    _, cheap = tune_exit_thresholds(probs, y, np.array([1.0, 10.0]))
    assert cheap.mcc == 1.0 and cheap.exit_rates[0] == 1.0  # no budget: cheapest perfect setting
    _, spent = tune_exit_thresholds(probs, y, np.array([1.0, 10.0]), max_cost=11.0)
    assert spent.mcc == 1.0 and spent.exit_rates[1] == 1.0 and spent.log_loss < cheap.log_loss


def test_tiers_not_allowed_to_exit_keep_every_image():
    probs, y, hard = two_tier_data()
    probs = np.vstack([probs[0], probs[0], probs[1]])  # a cheap tier that would send most images out
    th, sim = tune_exit_thresholds(probs, y, np.array([1.0, 1.0, 10.0]), may_exit=(False, True))
    assert th[0] == (None, None) and sim.exit_rates[0] == 0.0
    assert sim.exit_rates[1] == pytest.approx(1 - hard.mean()) and sim.mcc == 1.0
    with pytest.raises(ValueError, match="names 1 tiers"):
        tune_exit_thresholds(probs, y, np.array([1.0, 1.0, 10.0]), may_exit=(True,))
