import numpy as np
import pytest

from workzone.evaluation.metrics import roc_auc
from workzone.evaluation.stats import (
    bootstrap_interval,
    fast_auc,
    headline_metrics,
    pr_curve,
    reliability_bins,
    roc_curve,
    subset_score,
    wilson_interval,
)


@pytest.mark.parametrize("k, n, low, high", [
    (9, 10, 0.596, 0.982),
    (0, 10, 0.0, 0.278),
    (10, 10, 0.722, 1.0),
    (50, 100, 0.404, 0.596),
])
def test_wilson_interval_matches_published_values(k, n, low, high):
    iv = wilson_interval(k, n)
    assert iv.value == pytest.approx(k / n)
    assert iv.low == pytest.approx(low, abs=1e-3) and iv.high == pytest.approx(high, abs=1e-3)


def test_wilson_interval_is_undefined_without_trials():
    iv = wilson_interval(0, 0)
    assert iv.value is None and iv.low is None and iv.high is None


def test_fast_auc_agrees_with_the_rank_statistic_including_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.7 + y * 0.3, 2)  # rounding makes ties
    assert fast_auc(y, p) == pytest.approx(roc_auc(y, p))
    assert fast_auc(np.array([1, 1]), np.array([0.2, 0.9])) is None


def test_bootstrap_interval_brackets_the_value_and_narrows_with_more_data():
    rng = np.random.default_rng(2)

    def width(n):
        y = rng.integers(0, 2, n)
        p = np.clip(y * 0.4 + rng.random(n) * 0.6, 0, 1)
        iv = bootstrap_interval(y, p, fast_auc, resamples=300)
        assert iv.low <= iv.value <= iv.high
        return iv.high - iv.low

    assert width(2000) < width(60)


def test_roc_and_pr_curves_on_a_perfect_ranking():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.8, 0.9])
    fpr, tpr = roc_curve(y, p)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert tpr[np.argmax(fpr > 0)] == 1.0  # every positive before the first negative
    recall, precision = pr_curve(y, p)
    assert list(recall) == [0.5, 1.0, 1.0, 1.0] and list(precision) == [1.0, 1.0, 2 / 3, 0.5]


def test_reliability_bins_count_every_image_once():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.95, 0.9, 0.5, 1.0])
    bins = reliability_bins(y, p, bins=10)
    assert sum(b["n"] for b in bins) == 5
    top = bins[-1]
    assert top["low"] == pytest.approx(0.9) and top["n"] == 3 and top["observed"] == 1.0


@pytest.mark.parametrize("y, p, metric, value", [
    ([0, 0, 0, 0], [0.1, 0.2, 0.9, 0.3], "specificity", 0.75),
    ([1, 1, 1], [0.9, 0.2, 0.8], "recall", 2 / 3),
    ([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2], "MCC", 1.0),
    # one road-work image among nine: its MCC would swing on that image alone, so the nine are scored
    ([0] * 9 + [1], [0.1] * 8 + [0.9, 0.2], "specificity", 8 / 9),
])
def test_subset_score_never_reports_an_undefined_mcc(y, p, metric, value):
    s = subset_score(y, p)
    assert s["metric"] == metric and s["interval"].value == pytest.approx(value)


def test_headline_metrics_have_intervals():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.5 + rng.random(200) * 0.5, 0, 1)
    m = headline_metrics(y, p, resamples=200)
    assert set(m) == {"MCC", "ROC-AUC", "accuracy", "recall", "specificity", "precision"}
    for iv in m.values():
        assert iv.low <= iv.value <= iv.high


def test_a_subset_with_one_minority_image_says_so_instead_of_an_mcc():
    s = subset_score([0] * 9 + [1], [0.1] * 8 + [0.9, 0.2])
    assert (s["metric"], s["n"], s["positives"]) == ("specificity", 10, 1)
    assert s["note"] == "; MCC not shown: 1 road-work image only"
