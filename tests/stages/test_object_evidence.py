"""The detector's learned image-level decision: features, the sidecar block, and the stage using it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workzone.object_evidence import ObjectDecision, feature_names, object_features

CLASSES = ("cone", "drum", "worker")


def test_features_summarise_per_class_and_overall() -> None:
    det = np.array([[0, 0, 10, 40, 0.9, 0], [20, 0, 30, 20, 0.35, 0], [0, 0, 5, 5, 0.2, 2]])
    f = dict(zip(feature_names(CLASSES), object_features(det, len(CLASSES), image_height=100.0)))
    assert f["max_cone"] == pytest.approx(np.log(0.9 / 0.1))
    assert f["count_cone"] == pytest.approx(np.log1p(2)) and f["count_worker"] == 0.0
    assert f["max_drum"] == pytest.approx(-6.0)  # absent class: clipped, never -inf
    assert f["count_any"] == pytest.approx(np.log1p(2)) and f["tallest"] == pytest.approx(0.4)
    empty = object_features(np.zeros((0, 6)), len(CLASSES))
    assert np.isfinite(empty).all() and empty[-1] == 0.0


def test_decision_rises_with_more_and_surer_objects() -> None:
    spec = {"version": 1, "features": ["max_any", "count_any"], "bias": -1.0, "weights": [0.8, 1.2]}
    d = ObjectDecision(spec, CLASSES)
    none = d.log_odds(np.zeros((0, 6)), 100)
    one = d.log_odds(np.array([[0, 0, 5, 10, 0.5, 0]]), 100)
    three = d.log_odds(np.array([[0, 0, 5, 10, 0.5, 0], [9, 0, 14, 10, 0.6, 1], [20, 0, 25, 9, 0.7, 0]]), 100)
    assert none < one < three
    assert d.contributions(np.array([[0, 0, 5, 10, 0.9, 0]]), 100)[0][0] in ("max_any", "count_any")


@pytest.mark.parametrize("spec, match", [
    ({"version": 2, "features": ["max_any"], "bias": 0, "weights": [1]}, "other features"),
    ({"version": 1, "features": ["max_lorry"], "bias": 0, "weights": [1]}, "other features"),
    ({"version": 1, "features": ["max_any"], "bias": 0, "weights": [1, 2]}, "expected 1 finite"),
    ({"version": 1, "features": ["max_any"], "bias": 0, "weights": [float("nan")]}, "expected 1 finite"),
])
def test_bad_decision_blocks_are_refused(spec: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ObjectDecision(spec, CLASSES)


def test_shipped_object_detector_carries_a_decision() -> None:
    import workzone

    side = Path(workzone.__file__).parent / "models" / "roadwork_objects.json"
    meta = json.loads(side.read_text())
    d = ObjectDecision(meta["decision"], meta["class_names"])
    assert "out-of-fold" in meta["decision"]["fitted_on"]
    # More confident objects must never lower the score (the fit is free to learn otherwise; check it did not).
    lo = d.log_odds(np.array([[0, 0, 5, 10, 0.3, 0]]), 100)
    hi = d.log_odds(np.array([[0, 0, 5, 10, 0.9, 0]]), 100)
    assert hi > lo
