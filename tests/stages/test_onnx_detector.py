"""Tests for workzone.stages.onnx_detector: real YOLOX-Nano, and a tiny YOLOv8-layout graph."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.stages._support import run_stage

from workzone.errors import ConfigError, ModelFileError
from workzone.stages.base import StageContext
from workzone.stages.onnx_detector import decode_yolox, letterbox, nms
from workzone.stages.registry import create_stage
from workzone.types import Image, sigmoid

YOLOX_DIR = Path(__file__).resolve().parents[3] / "shared" / "models" / "yolox-nano"
CAMVID = Path(__file__).resolve().parents[3] / "shared" / "data" / "roadwork-v1" / "images" / "camvid" / "0001tp_006690.jpg"
needs_yolox = pytest.mark.skipif(not (YOLOX_DIR / "yolox_nano.onnx").is_file(), reason="shared YOLOX-Nano not present")


# -- pure functions ---------------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "center", "scale", "offset"), [
    ((50, 100), True, 0.64, (0.0, 16.0)),
    ((50, 100), False, 0.64, (0.0, 0.0)),
    ((128, 32), True, 0.5, (24.0, 0.0)),
])
def test_letterbox_geometry(shape, center, scale, offset):
    px = np.full(shape + (3,), 200, np.uint8)
    canvas, s, d = letterbox(px, 64, pad=114, center=center)
    assert canvas.shape == (64, 64, 3) and s == pytest.approx(scale) and d == offset
    assert canvas[-1, -1, 0] == 114  # the far corner is always padding for these shapes
    assert canvas[int(d[1]) + 1, int(d[0]) + 1, 0] == 200


def test_decode_yolox_places_a_box_from_its_grid_cell():
    size, nc = 64, 3
    raw = np.zeros((8 * 8 + 4 * 4 + 2 * 2, 5 + nc), np.float32)
    # Stride-16 grid is 4x4 and starts after the 64 stride-8 cells; cell (x=2, y=1) is row 64 + 1*4 + 2.
    row = 64 + 4 + 2
    raw[row, :4] = [0.5, 0.5, np.log(2.0), np.log(1.0)]
    raw[row, 4] = 0.9
    raw[row, 5 + 2] = 0.5
    boxes, scores, cls = decode_yolox(raw, size)
    assert cls[row] == 2 and scores[row] == pytest.approx(0.45)
    # centre (2.5*16, 1.5*16) = (40, 24), size (32, 16)
    np.testing.assert_allclose(boxes[row], [24, 16, 56, 32])
    with pytest.raises(ValueError, match="implies"):
        decode_yolox(raw[:-1], size)


def test_nms_is_per_class():
    b = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], float)
    assert nms(b, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), 0.5) == [0, 2]
    assert nms(b, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), 0.95) == [0, 1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5) == []


# -- real YOLOX-Nano --------------------------------------------------------------------------

def _yolox(**extra):
    params = {"model": str(YOLOX_DIR / "yolox_nano.onnx"), "class_names": str(YOLOX_DIR / "coco_classes.txt"),
              "threads": 1, **extra}
    return create_stage("onnx_detector", "yolox", params)


@needs_yolox
def test_yolox_nano_on_a_blank_image_reports_the_prior():
    blank = Image(np.full((240, 320, 3), 90, np.uint8))
    (out,) = run_stage(_yolox(classes={"prior": 0.2}), [blank])
    assert out.evidence.boxes == ()
    assert sigmoid(out.log_odds) == pytest.approx(0.2, abs=1e-6)


@needs_yolox
@pytest.mark.skipif(not CAMVID.is_file(), reason="shared roadwork-v1 data not present")
def test_yolox_nano_finds_cars_in_a_street_scene_and_maps_them():
    from workzone.io.images import decode_image

    img = decode_image(CAMVID)
    stage = _yolox(classes={"labels": {"car": "vehicle", "bus": "vehicle"}, "weights": {"vehicle": 0.2}})
    mapped, unmapped = run_stage(stage, [img, img])[0], run_stage(_yolox(), [img])[0]
    vehicles = [b for b in mapped.evidence.boxes if b.label == "vehicle"]
    assert len(vehicles) >= 2
    for b in vehicles:
        assert 0 <= b.x1 < b.x2 <= img.width and 0 <= b.y1 < b.y2 <= img.height
    # COCO classes count for nothing unless a pipeline maps them.
    assert unmapped.evidence.boxes == () and "car" in " ".join(unmapped.evidence.notes)
    assert mapped.log_odds > unmapped.log_odds


@needs_yolox
def test_missing_class_names_file_is_a_model_file_error(tmp_path):
    stage = create_stage("onnx_detector", "d", {"model": str(YOLOX_DIR / "yolox_nano.onnx"),
                                                 "class_names": "nope.txt"}, context=StageContext(base_dir=tmp_path))
    with pytest.raises(ModelFileError, match="nope.txt"):
        asyncio.run(stage.load())


def test_missing_model_and_bad_params():
    with pytest.raises(ModelFileError, match="does not exist"):
        asyncio.run(create_stage("onnx_detector", "d", {"model": "/nonexistent.onnx"}).load())
    with pytest.raises(ConfigError, match="format"):
        create_stage("onnx_detector", "d", {"model": "x.onnx", "format": "ssd"})


# -- tiny YOLOv8-layout graph -----------------------------------------------------------------

def _yolov8_onnx(path: Path, size: int = 64) -> None:
    """A graph whose head output is a fixed (4 + 2, 3) table, plus 0 * mean(input) so it reads the input."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    head = np.zeros((1, 6, 3), np.float32)
    head[0, :, 0] = [32, 32, 20, 10, 0.9, 0.0]     # class 0 box centred in the canvas
    head[0, :, 1] = [33, 32, 20, 10, 0.6, 0.1]     # overlaps box 0, same class: removed by NMS
    head[0, :, 2] = [16, 16, 8, 8, 0.05, 0.8]      # class 1 box in the top-left (padding area)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["head", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_yolov8",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 3])],
        initializer=[numpy_helper.from_array(head, "head"), numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"names": "{0: 'traffic_cone', 1: 'worker'}"})
    onnx.save(model, str(path))


def test_yolov8_layout_decodes_unletterboxes_and_reads_names_metadata(tmp_path):
    _yolov8_onnx(tmp_path / "tiny.onnx")
    stage = create_stage("onnx_detector", "v8", {"model": "tiny.onnx", "format": "yolov8", "conf": 0.3},
                         context=StageContext(base_dir=tmp_path))
    img = Image(np.zeros((64, 128, 3), np.uint8))  # scale 0.5, dy = 16
    (out,) = run_stage(stage, [img])
    box, worker = out.evidence.boxes  # the overlapping second cone was suppressed
    assert box.label == "cone" and box.score == pytest.approx(0.9)
    # canvas box (22, 27, 42, 37) -> image ((22 - 0) / 0.5, (27 - 16) / 0.5, ...)
    np.testing.assert_allclose([box.x1, box.y1, box.x2, box.y2], [44, 22, 84, 42], atol=1e-4)
    # canvas (12, 12, 20, 20) lies partly in the top padding: clipped to the image
    assert worker.label == "worker" and worker.score == pytest.approx(0.8)
    np.testing.assert_allclose([worker.x1, worker.y1, worker.x2, worker.y2], [24, 0, 40, 8], atol=1e-4)
    assert out.log_odds > 0
