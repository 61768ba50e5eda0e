"""Tests for workzone.stages._evidence_map: label mapping and noisy-OR scoring."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from workzone.stages._evidence_map import ClassMap, Detection, detections_to_output, normalise_label, score_boxes
from workzone.types import Box, sigmoid


@pytest.mark.parametrize(("label", "expected"), [
    ("traffic_cone", ("cone", 0.85)),
    ("Traffic Cone", ("cone", 0.85)),
    ("construction-barrel", ("drum", 0.85)),
    ("arrow_board", ("arrow_board", 0.95)),   # an evidence name maps to itself
    ("Excavator", ("machine", 0.7)),
    ("dog", None),
    ("person", None),                          # COCO person is not road work unless mapped
])
def test_resolve_default_aliases(label, expected):
    assert ClassMap().resolve(label) == expected


def test_explicit_labels_win_over_aliases_and_weights_override():
    cm = ClassMap(labels={"Cone": "barrier", "person": "worker"}, weights={"worker": 0.3})
    assert cm.resolve("cone") == ("barrier", 0.6)
    assert cm.resolve("PERSON") == ("worker", 0.3)


def test_builtin_aliases_can_be_turned_off():
    cm = ClassMap(builtin_aliases=False, labels={"0": "cone"})
    assert cm.resolve("traffic cone") is None
    assert cm.resolve("0") == ("cone", 0.85)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"labels": {"x": "unicorn"}}, "unknown evidence class 'unicorn'"),
    ({"weights": {"cone": 1.5}}, "weights.cone"),
    ({"prior": 0.0}, "prior"),
    ({"colour": "red"}, "colour"),
])
def test_invalid_class_maps_are_rejected(kwargs, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ClassMap(**kwargs)


def test_new_evidence_class_declared_by_weight():
    cm = ClassMap(labels={"car": "vehicle"}, weights={"vehicle": 0.1})
    assert cm.resolve("car") == ("vehicle", 0.1)


def test_no_boxes_gives_the_prior():
    assert sigmoid(score_boxes([], ClassMap(prior=0.2))) == pytest.approx(0.2, abs=1e-9)


def test_noisy_or_matches_hand_computation():
    cm = ClassMap(prior=0.1)
    boxes = [Box("cone", 0.8, 0, 0, 1, 1), Box("worker", 0.5, 0, 0, 1, 1), Box("dog", 1.0, 0, 0, 1, 1)]
    p_none = 0.9 * (1 - 0.85 * 0.8) * (1 - 0.7 * 0.5)
    assert sigmoid(score_boxes(boxes, cm)) == pytest.approx(1 - p_none, rel=1e-9)


def test_more_and_stronger_boxes_never_lower_the_score():
    cm = ClassMap()
    one = score_boxes([Box("cone", 0.5, 0, 0, 1, 1)], cm)
    two = score_boxes([Box("cone", 0.5, 0, 0, 1, 1), Box("drum", 0.3, 0, 0, 1, 1)], cm)
    strong = score_boxes([Box("cone", 0.9, 0, 0, 1, 1)], cm)
    assert score_boxes([], cm) < one < two
    assert one < strong


def test_many_certain_boxes_stay_finite():
    boxes = [Box("arrow_board", 1.0, 0, 0, 1, 1)] * 500
    z = score_boxes(boxes, ClassMap(weights={"arrow_board": 1.0}))
    assert math.isfinite(z) and z > 10


def test_detections_to_output_maps_orders_and_notes():
    dets = [Detection("person", 0.9, 0, 0, 5, 5), Detection("traffic_cone", 0.4, 10, 10, 20, 30),
            Detection("traffic_cone", 0.7, 30, 30, 20, 40),  # x1 > x2 is repaired, not rejected
            Detection("Excavator", 0.05, 0, 0, 1, 1)]
    out = detections_to_output(dets, ClassMap(min_score=0.1, max_boxes=1))
    assert [b.label for b in out.evidence.boxes] == ["cone"]
    assert out.evidence.boxes[0].score == pytest.approx(0.7)
    assert (out.evidence.boxes[0].x1, out.evidence.boxes[0].x2) == (20, 30)
    notes = " | ".join(out.evidence.notes)
    assert "2 cone (best 0.70)" in notes and "traffic_cone->cone" in notes and "ignored boxes labelled 'person' (x1)" in notes
    # Both cones count towards the score even though only one box is reported.
    both = score_boxes([Box("cone", 0.7, 0, 0, 1, 1), Box("cone", 0.4, 0, 0, 1, 1)], ClassMap())
    assert out.log_odds == pytest.approx(both)


def test_zero_weight_silences_a_class():
    out = detections_to_output([Detection("cone", 0.99, 0, 0, 1, 1)], ClassMap(weights={"cone": 0.0}))
    assert out.evidence.boxes == ()
    assert sigmoid(out.log_odds) == pytest.approx(0.1)


def test_normalise_label():
    assert normalise_label("  Road__Work - Sign ") == "road work sign"
