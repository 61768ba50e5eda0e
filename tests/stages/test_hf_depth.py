"""Tests for workzone.stages.hf_depth: camera geometry on synthetic depth, and the whole stage with a
tiny random Depth Anything wrapped around the tiny YOLOv8-layout ONNX detector."""

from __future__ import annotations

import numpy as np
import pytest

from tests.stages._support import run_stage

from workzone.errors import ConfigError
from workzone.stages.hf_depth import box_size_m, fit_ground_scale, focal_px
from workzone.stages.registry import create_stage
from workzone.types import Box, Image, sigmoid

# -- geometry ---------------------------------------------------------------------------------


def test_focal_px():
    assert focal_px(1000, 90.0) == pytest.approx(500.0)
    assert focal_px(640, 60.0) == pytest.approx(320 / np.tan(np.radians(30)))


def _road_disparity(h, w, f, cam_h, horizon, s):
    """Disparity s / Z of a flat road seen from height cam_h (sky above the horizon: 0)."""
    dy = np.arange(h, dtype=np.float64)[:, None] + 0.5 - h * horizon
    z = np.where(dy > 0, f * cam_h / np.maximum(dy, 1e-9), np.inf)
    return np.broadcast_to(s / z, (h, w)).copy()


@pytest.mark.parametrize(("s", "horizon"), [(3.0, 0.5), (0.02, 0.4)])
def test_fit_ground_scale_recovers_the_scale_of_a_flat_road(s, horizon):
    f = focal_px(320, 70)
    disp = _road_disparity(240, 320, f, 1.4, horizon, s)
    assert fit_ground_scale(disp, f, 1.4, horizon) == pytest.approx(s, rel=1e-6)
    # A wrong camera height scales every distance by the same factor.
    assert fit_ground_scale(disp, f, 2.8, horizon) == pytest.approx(2 * s, rel=1e-6)


def test_fit_ground_scale_without_road_pixels():
    assert fit_ground_scale(np.zeros((100, 100)), 100.0, 1.4, 0.5) is None
    assert fit_ground_scale(np.ones((100, 100)), 100.0, 1.4, 0.999) is None  # no row below the horizon


def test_box_size_m_from_metric_depth():
    depth = np.full((200, 300), 50.0)
    depth[100:150, 100:120] = 10.0  # an object 10 m away, background 50 m
    f = 200.0
    h, w, z = box_size_m(depth, Box("cone", 0.9, 100, 100, 120, 150), f)
    assert z == 10.0 and h == pytest.approx(50 * 10 / f) and w == pytest.approx(20 * 10 / f)
    assert box_size_m(np.full((10, 10), np.inf), Box("cone", 0.9, 2, 2, 6, 6), f) is None


def test_a_cone_at_the_right_distance_is_plausible_and_a_billboard_one_is_not():
    # 640 px wide, 70 deg: f = 457 px. A 0.7 m cone 10 m away is 32 px tall; the same box read as
    # 80 m away (a cone painted on a far billboard) would be 5.6 m tall.
    f = focal_px(640, 70)
    box = Box("cone", 0.9, 300, 300, 320, 300 + 0.7 * f / 10)
    near = np.full((480, 640), 10.0)
    far = np.full((480, 640), 80.0)
    assert box_size_m(near, box, f)[0] == pytest.approx(0.7, rel=1e-6)
    assert box_size_m(far, box, f)[0] == pytest.approx(5.6, rel=1e-6)


# -- params -----------------------------------------------------------------------------------

def test_detector_spec_is_validated_when_the_stage_is_built(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        create_stage("hf_depth", "d", {"model": "m", "detector": {"model": "x.onnx"}})
    with pytest.raises(ConfigError, match="colour"):  # the nested stage's own unknown key
        create_stage("hf_depth", "d", {"model": "m", "detector": {"kind": "onnx_detector", "model": "x.onnx",
                                                                  "colour": 1}})
    with pytest.raises(ConfigError, match="class map"):
        create_stage("hf_depth", "d", {"model": "m", "detector": {"kind": "onnx_classifier"}})
    with pytest.raises(ConfigError, match="height"):
        create_stage("hf_depth", "d", {"model": "m", "detector": {"kind": "onnx_detector", "model": "x"},
                                       "sizes": {"cone": {"height": [2, 1], "width": [0, 1]}}})


# -- the whole stage --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from tests.stages._tiny_hf import save_depth_anything
    from tests.stages.test_onnx_detector import _yolov8_onnx

    root = tmp_path_factory.mktemp("depth")
    _yolov8_onnx(root / "tiny.onnx")
    return save_depth_anything(root / "depth"), root / "tiny.onnx"


def _stage(models, **extra):
    depth_dir, onnx_path = models
    detector = {"kind": "onnx_detector", "model": str(onnx_path), "format": "yolov8", "conf": 0.3,
                "classes": {"prior": 0.1}}
    # min_box_px 10 leaves the 16 x 8 px worker box unchecked: only the cone is judged.
    return create_stage("hf_depth", "depth", {"model": str(depth_dir), "detector": detector, "min_box_px": 10, **extra})


IMAGES = [Image(np.zeros((64, 128, 3), np.uint8)),
          Image(np.random.default_rng(3).integers(0, 255, (64, 128, 3), dtype=np.uint8)),
          Image(np.random.default_rng(4).integers(0, 255, (96, 128, 3), dtype=np.uint8))]  # another shape in the batch


def test_implausible_cone_is_dropped_and_the_score_recomputed(models):
    outs = run_stage(_stage(models, sizes={"cone": {"height": [0.001, 0.002], "width": [0.001, 0.002]}}), IMAGES)
    for out in outs:
        assert [b.label for b in out.evidence.boxes] == ["worker"]
        notes = " | ".join(out.evidence.notes)
        assert "kept 1/2" in notes and "dropped implausible cone" in notes
        # noisy-OR over the worker alone: 1 - 0.9 * (1 - 0.7 * 0.8)
        assert sigmoid(out.log_odds) == pytest.approx(1 - 0.9 * (1 - 0.7 * 0.8), abs=1e-6)


def test_plausible_boxes_are_kept_with_the_detector_score(models):
    inner = run_stage(create_stage("onnx_detector", "d", {"model": str(models[1]), "format": "yolov8", "conf": 0.3}),
                 IMAGES)
    outs = run_stage(_stage(models, sizes={"cone": {"height": [0.0, 1e6], "width": [0.0, 1e6]}}), IMAGES)
    for out, ref in zip(outs, inner):
        assert out.evidence.boxes == ref.evidence.boxes
        assert out.log_odds == pytest.approx(ref.log_odds)
        assert any(n.startswith("depth: kept 2/2") for n in out.evidence.notes)


def test_no_boxes_means_no_depth_run(models):
    outs = run_stage(_stage(models, detector={"kind": "onnx_detector", "model": str(models[1]), "format": "yolov8",
                                         "conf": 0.99}), IMAGES[:1])
    assert outs[0].evidence.boxes == ()
    assert not any(n.startswith("depth:") for n in outs[0].evidence.notes)
