import numpy as np
import pytest

from workzone.evaluation.metrics import BinaryMetric, binary_report, confusion, matthews_corrcoef, percentiles, roc_auc


@pytest.mark.parametrize(
    "y, p, expected",
    [
        ([1, 1, 0, 0], [1, 1, 0, 0], 1.0),
        ([1, 1, 0, 0], [0, 0, 1, 1], -1.0),
        ([1, 0, 1, 0], [1, 1, 1, 1], 0.0),  # undefined -> 0
        ([1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1], 1 / 3),
    ],
)
def test_mcc(y, p, expected):
    assert matthews_corrcoef(y, p) == pytest.approx(expected)


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.random(200) + y * 0.3
    s[:20] = 0.5  # ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert roc_auc(y, s) == pytest.approx(pairwise)
    assert roc_auc([1, 1], [0.2, 0.3]) is None


def test_report_and_metric_accumulator():
    m = BinaryMetric()
    m.update([1, 0], [0.9, 0.2])
    m.update([1, 0], [0.4, 0.7])
    r = m.compute()
    assert r["confusion"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert r["accuracy"] == 0.5 and r["precision"] == 0.5 and r["recall"] == 0.5
    m.reset()
    with pytest.raises(ValueError):
        m.update([1], [0.5, 0.5])
    assert binary_report([1, 0], [0.5, 0.5])["confusion"]["tp"] == 0  # 0.5 is not road work
    assert confusion([1], [1]) == (1, 0, 0, 0)
    assert percentiles([1, 2, 3, 4])["p50"] == 2.5


@pytest.mark.parametrize("y, p", [([0, 0, 0], [0.1, 0.9, 0.2]), ([1, 1], [0.9, 0.2])])
def test_report_mcc_of_one_class_is_undefined_not_zero(y, p):
    assert binary_report(y, p)["mcc"] is None
    assert binary_report(y + [1 - y[0]], p + [0.5])["mcc"] is not None
