"""Tests for workzone.stages.hf_segmentation: mask shape numbers and rules on drawn masks, and the whole
stage with a tiny random SAM, wrapping the tiny ONNX detector or prompted by an earlier tier's boxes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.stages._support import run_stage

from workzone.cascade import Cascade
from workzone.config.loader import parse_pipeline
from workzone.errors import ConfigError
from workzone.stages.registry import create_stage
from workzone.stages.hf_segmentation import DEFAULT_SHAPES, MaskShape, ShapeRule, judge_shape, measure_mask
from workzone.types import Box, Image, sigmoid

# -- shape numbers and rules on drawn masks ----------------------------------------------------


def _cone_mask(h=100, w=100):
    """A triangle standing on row 90: a cone seen from the road, in the box (40, 50, 60, 90)."""
    m = np.zeros((h, w), bool)
    for y in range(50, 90):
        half = (y - 50) * 10 // 40
        m[y, 50 - half:50 + half + 1] = True
    return m, Box("cone", 0.9, 40, 50, 60, 90)


def _billboard_mask():
    """A flat panel that fills its box, high on a facade (rows 10-40 of 100)."""
    m = np.zeros((100, 100), bool)
    m[10:40, 20:80] = True
    return m, Box("cone", 0.9, 20, 10, 80, 40)


def test_measure_mask_of_a_cone_and_a_billboard():
    cone = measure_mask(*_cone_mask())
    assert cone.area_px == int(_cone_mask()[0].sum())
    assert 0.4 < cone.fill < 0.7 and cone.aspect > 1.5 and cone.bottom == pytest.approx(0.9)
    board = measure_mask(*_billboard_mask())
    assert board.fill == pytest.approx(1.0) and board.aspect == pytest.approx(0.5) and board.bottom == pytest.approx(0.4)
    assert measure_mask(np.zeros((10, 10), bool), Box("cone", 0.5, 0, 0, 5, 5)) == MaskShape(0, 0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(("mask_box", "label", "veto"), [
    (_cone_mask(), "cone", None),
    (_billboard_mask(), "cone", "fill 1.00"),
    (_billboard_mask(), "sign", None),                    # a sign may fill its box and hang high
    (_billboard_mask(), "machine", None),                 # no rule for the class: only the min-fill check
])
def test_judge_shape_table(mask_box, label, veto):
    why = judge_shape(measure_mask(*mask_box), DEFAULT_SHAPES.get(label), 0.45, 0.05)
    assert (why is None) if veto is None else (veto in why)


@pytest.mark.parametrize(("shape", "rule", "veto"), [
    (MaskShape(2, 0.01, 1.0, 0.0, 0.9), None, "no object"),
    (MaskShape(300, 0.5, 0.5, 0.01, 0.9), ShapeRule(aspect=(0.8, 5)), "height/width 0.50"),
    (MaskShape(300, 0.5, 2.0, 0.2, 0.9), ShapeRule(max_image_frac=0.05), "covers 20.0%"),
    (MaskShape(300, 0.5, 2.0, 0.01, 0.3), ShapeRule(on_road=True), "not on the road"),
    (MaskShape(300, 0.5, 2.0, 0.01, 0.9), ShapeRule(on_road=True), None),
])
def test_each_rule_vetoes_on_its_own(shape, rule, veto):
    why = judge_shape(shape, rule, 0.45, 0.05)
    assert (why is None) if veto is None else (veto in why)


def test_params_are_validated_when_the_stage_is_built():
    with pytest.raises(ConfigError, match="kind"):
        create_stage("hf_segmentation", "s", {"model": "m", "detector": {"model": "x.onnx"}})
    with pytest.raises(ConfigError, match="colour"):
        create_stage("hf_segmentation", "s", {"model": "m", "detector": {"kind": "onnx_detector", "model": "x",
                                                                         "colour": 1}})
    with pytest.raises(ConfigError, match="not both"):
        create_stage("hf_segmentation", "s", {"model": "m", "from_stages": ["yolo"],
                                              "detector": {"kind": "onnx_detector", "model": "x"}})
    with pytest.raises(ConfigError, match="fill"):
        create_stage("hf_segmentation", "s", {"model": "m", "shapes": {"cone": {"fill": [0.9, 0.1]}}})


# -- the whole stage with a tiny SAM ------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from tests.stages._tiny_hf import save_sam
    from tests.stages.test_onnx_detector import _yolov8_onnx

    root = tmp_path_factory.mktemp("sam")
    _yolov8_onnx(root / "tiny.onnx")
    return save_sam(root / "sam"), root / "tiny.onnx"


def _detector(onnx_path, conf=0.3):
    return {"kind": "onnx_detector", "model": str(onnx_path), "format": "yolov8", "conf": conf, "classes": {"prior": 0.1}}


IMAGES = [Image(np.zeros((64, 128, 3), np.uint8)),
          Image(np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8))]
ANY_SHAPE = {"fill": [0.0, 1.0], "aspect": [0.0, 1e9]}


def test_boxes_whose_masks_fit_are_confirmed_with_the_detector_score(models):
    sam, onnx_path = models
    inner = run_stage(create_stage("onnx_detector", "d", {k: v for k, v in _detector(onnx_path).items() if k != "kind"}),
                      IMAGES)
    stage = create_stage("hf_segmentation", "seg", {"model": str(sam), "detector": _detector(onnx_path), "min_fill": 0.0,
                                                    "min_box_px": 1, "shapes": {"cone": ANY_SHAPE, "worker": ANY_SHAPE}})
    for out, ref in zip(run_stage(stage, IMAGES), inner):
        assert out.evidence.boxes == ref.evidence.boxes
        assert out.log_odds == pytest.approx(ref.log_odds)
        notes = " | ".join(out.evidence.notes)
        assert "segmentation: confirmed 2, vetoed 0, unchecked 0 of 2 boxes" in notes
        assert "cone mask" in notes and ": confirmed" in notes


def test_a_cone_whose_mask_has_the_wrong_shape_is_vetoed_and_the_score_recomputed(models):
    sam, onnx_path = models
    # No mask is a hundred times taller than wide: the cone is vetoed whatever the random SAM draws;
    # the worker passes any shape.
    stage = create_stage("hf_segmentation", "seg", {"model": str(sam), "detector": _detector(onnx_path), "min_fill": 0.0,
                                                    "shapes": {"cone": {"aspect": [100, 1000]}, "worker": ANY_SHAPE}})
    for out in run_stage(stage, IMAGES):
        assert [b.label for b in out.evidence.boxes] == ["worker"]
        notes = " | ".join(out.evidence.notes)
        assert "confirmed 1, vetoed 1, unchecked 0 of 2" in notes and "cone mask" in notes and ": vetoed" in notes
        assert sigmoid(out.log_odds) == pytest.approx(1 - 0.9 * (1 - 0.7 * 0.8), abs=1e-6)


def test_in_a_cascade_it_checks_the_boxes_of_an_earlier_tier_and_abstains_without_any(models):
    sam, onnx_path = models
    text = f"""
name: seg
tiers:
  - name: detect
    stages:
      - {{name: det, kind: onnx_detector, model: {onnx_path}, format: yolov8, conf: 0.3}}
      - {{name: blind, kind: onnx_detector, model: {onnx_path}, format: yolov8, conf: 0.99}}
  - name: segment
    stages:
      - name: seg
        kind: hf_segmentation
        model: {sam}
        min_fill: 0.0
        shapes: {{cone: {{aspect: [100, 1000]}}, worker: {{fill: [0, 1]}}}}
  - name: only-blind
    stages:
      - {{name: seg_blind, kind: hf_segmentation, model: {sam}, from_stages: [blind]}}
"""
    cascade = Cascade.from_config(parse_pipeline(text))

    async def go():
        async with cascade:
            return await cascade.run(IMAGES, run_all=True)

    for d in asyncio.run(go()):
        seg = next(r for r in d.stages if r.stage == "seg")
        assert seg.error is None and [b.label for b in seg.evidence.boxes] == ["worker"]
        assert any(n.startswith("segmentation: prompts from det") for n in seg.evidence.notes)
        blind = next(r for r in d.stages if r.stage == "seg_blind")
        assert blind.error is None and blind.log_odds is None and blind.evidence.boxes == ()
