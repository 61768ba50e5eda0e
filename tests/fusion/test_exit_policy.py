"""`tune --scores` with folds: exits chosen on out-of-fold probabilities, and which tiers may exit at all chosen
by how the tuned cascade does on folds it never saw."""

from __future__ import annotations

import numpy as np
import pytest

from workzone.config import parse_pipeline
from workzone.tuning import tune_scores

# Stages are never run here: tuning reads only their names, costs and the scores below.
PIPELINE = """
name: two-tier
tiers:
  - name: cheap
    stages: [{name: cheap, kind: sign_ocr, cost: 1.0}]
  - name: strong
    stages: [{name: strong, kind: sign_ocr, cost: 10.0}]
"""


def scores_with_a_shifted_source(shift: float, n: int = 240, seed: int = 0, shifted: tuple[str, ...] = ("d",)):
    """Four folds. ``strong`` is right everywhere; ``cheap`` is right too, except that on the ``shifted`` folds
    (sources unlike the others) its work zones score ``shift`` lower: confidently negative when shift is large."""
    rng = np.random.default_rng(seed)
    folds = np.repeat(list("abcd"), n // 4)
    y = rng.integers(0, 2, n)
    cheap = np.where(y == 1, 3.0, -3.0) + rng.normal(0, 0.5, n)
    cheap[np.isin(folds, shifted) & (y == 1)] -= shift
    strong = np.where(y == 1, 4.0, -4.0) + rng.normal(0, 0.5, n)
    scores = [{"cheap": float(c), "strong": float(s)} for c, s in zip(cheap, strong)]
    return scores, y.tolist(), folds.tolist()


def tune(shift: float, folds: bool):
    config = parse_pipeline(PIPELINE, "two-tier.yaml")
    scores, y, f = scores_with_a_shifted_source(shift)
    return tune_scores(config, scores, y, {"cheap": 1.0, "strong": 10.0}, balanced=True, prior_weight=1.0,
                       folds=f if folds else None).summary


def test_a_cheap_tier_that_holds_on_every_fold_may_exit():
    s = tune(0.0, folds=True)
    assert s["exit_tiers"]["chosen"] == ["cheap"] and s["exit_rates"][0] > 0.9
    assert s["exits_chosen_on"].startswith("out-of-fold")


def test_a_cheap_tier_that_fails_on_an_unseen_source_does_not_exit():
    s = tune(6.0, folds=True)
    candidates = {tuple(c["may_exit"]): c for c in s["exit_tiers"]["candidates"]}
    # Exits after `cheap`, tuned on the other folds, send fold d's work zones out as negatives.
    assert candidates[("cheap",)]["out_of_fold_mcc"] < candidates[()]["out_of_fold_mcc"] - 0.1
    assert s["exit_tiers"]["chosen"] == [] and s["exit_rates"][0] == 0.0 and s["mcc"] > 0.95


def test_in_sample_tuning_keeps_the_old_behaviour():
    s = tune(6.0, folds=False)
    assert "exit_tiers" not in s and s["exits_chosen_on"] == "in-sample fused probabilities"


def test_one_fold_cannot_choose_exits_out_of_fold_and_says_what_to_do():
    from workzone.errors import ConfigError

    config = parse_pipeline(PIPELINE, "two-tier.yaml")
    scores, y, _ = scores_with_a_shifted_source(0.0)
    with pytest.raises(ConfigError, match="--exits-in-sample"):
        tune_scores(config, scores, y, {"cheap": 1.0, "strong": 10.0}, folds=["only"] * len(y))


def test_a_fold_whose_rest_holds_one_class_is_still_scored():
    config = parse_pipeline(PIPELINE, "two-tier.yaml")
    scores, y, _ = scores_with_a_shifted_source(0.0)
    y = np.asarray(y)
    # Two folds: "neg" holds only images without road work, so without "mixed" one class is left.
    folds = np.where((y == 0) & (np.arange(len(y)) % 2 == 0), "neg", "mixed").tolist()
    s = tune_scores(config, scores, y.tolist(), {"cheap": 1.0, "strong": 10.0}, balanced=True, prior_weight=1.0,
                    folds=folds).summary
    assert s["mcc"] > 0.9 and len(s["exit_tiers"]["candidates"]) == 2
