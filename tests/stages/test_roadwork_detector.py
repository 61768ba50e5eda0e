"""roadwork_detector stage: a hand-built ONNX honouring the layout, and the shipped model on real images."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from tests.stages._support import run_stage

import workzone.stages.roadwork_detector as rd  # registers the kind until the builtin table lists it
from workzone.errors import ModelFileError
from workzone.stages.base import StageContext
from workzone.stages.registry import create_stage
from workzone_train.detector import box_iou
from workzone.types import Image, logit

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "roadwork-v1"
SHIPPED = Path(rd.__file__).resolve().parent.parent / "models" / "cone_detector.onnx"


def build_red_detector(path: Path, size: int = 64) -> Path:
    """A real ONNX model with the detector layout: each 8x8 cell's heat is relu(mean red - mean blue),
    peak-suppressed with a 3x3 max-pool; offsets 0.5 (cell centre); boxes 8 x 8 input pixels."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def const(name, values, dims, dtype=TensorProto.FLOAT):
        return helper.make_tensor(name, dtype, dims, values)

    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Slice", ["pooled", "s0", "e1", "ax"], ["r"]),
        helper.make_node("Slice", ["pooled", "s2", "e3", "ax"], ["b"]),
        helper.make_node("Sub", ["r", "b"], ["rb"]),
        helper.make_node("Relu", ["rb"], ["heat"]),
        helper.make_node("MaxPool", ["heat"], ["hmax"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Equal", ["heat", "hmax"], ["is_peak"]),
        helper.make_node("Cast", ["is_peak"], ["peak_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["heat", "peak_f"], ["peaks"]),
        helper.make_node("Mul", ["heat", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "half"], ["off"]),
        helper.make_node("Add", ["zeros", "eight"], ["wh"]),
        helper.make_node("Concat", ["peaks", "off", "off", "wh", "wh"], ["out"], axis=1),
    ]
    inits = [const("s0", [0], [1], TensorProto.INT64), const("e1", [1], [1], TensorProto.INT64),
             const("s2", [2], [1], TensorProto.INT64), const("e3", [3], [1], TensorProto.INT64),
             const("ax", [1], [1], TensorProto.INT64), const("zero", [0.0], [1]), const("half", [0.5], [1]),
             const("eight", [8.0], [1])]
    g = size // 8
    graph = helper.make_graph(nodes, "red_detector",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5, g, g])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    path.with_suffix(".json").write_text(json.dumps({"input_size": size, "stride": 8, "class_names": ["cone"],
                                                     "score_threshold": 0.3}), encoding="utf-8")
    return path


@pytest.fixture
def red_model(tmp_path: Path) -> Path:
    pytest.importorskip("onnxruntime")
    return build_red_detector(tmp_path / "red.onnx")


def _blue_with_red(w=256, h=128, box=(64, 64, 96, 96), red=255) -> np.ndarray:
    px = np.zeros((h, w, 3), np.uint8)
    px[..., 2] = 255
    x1, y1, x2, y2 = box
    px[y1:y2, x1:x2] = (red, 0, 0)
    return px


def test_boxes_map_back_through_the_letterbox(red_model: Path):
    stage = create_stage("roadwork_detector", "det", {"model": str(red_model)})
    out = run_stage(stage, [Image(_blue_with_red())])[0]
    assert out.evidence.boxes, out
    b = out.evidence.boxes[0]
    assert b.label == "cone" and b.score > 0.8  # bilinear resizing blurs the square's edges a little
    # A 256 x 128 image letterboxed to 64: the red square is one 8 x 8 cell, decoded at its centre.
    assert box_iou(np.array([[b.x1, b.y1, b.x2, b.y2]]), np.array([[64, 64, 96, 96]]))[0, 0] > 0.9
    assert out.log_odds == pytest.approx(logit(b.score), abs=1e-3)  # one box: noisy-OR is its score


def test_score_is_monotone_in_box_confidence(red_model: Path):
    stage = create_stage("roadwork_detector", "det", {"model": str(red_model)})
    blue = _blue_with_red(box=(0, 0, 0, 0))
    faint, strong = _blue_with_red(red=90), _blue_with_red(red=255)
    z_blue, z_faint, z_strong = (o.log_odds for o in run_stage(stage, [Image(blue), Image(faint), Image(strong)]))
    assert z_blue == pytest.approx(logit(1e-4))  # no box at all: strong evidence against, finite
    assert z_blue < z_faint < z_strong


def test_two_boxes_pool_higher_than_one(red_model: Path):
    one = _blue_with_red(red=120)
    two = one.copy()
    two[64:96, 160:192] = (120, 0, 0)
    stage = create_stage("roadwork_detector", "det", {"model": str(red_model), "score_threshold": 0.2})
    z1, z2 = (o.log_odds for o in run_stage(stage, [Image(one), Image(two)]))
    assert z2 > z1
    assert rd.pool_scores(np.array([0.4, 0.4])) > rd.pool_scores(np.array([0.4]))


def test_missing_model_is_a_model_file_error(tmp_path: Path):
    stage = create_stage("roadwork_detector", "det", {"model": "nope.onnx"}, context=StageContext(base_dir=tmp_path))
    with pytest.raises(ModelFileError, match="does not exist"):
        asyncio.run(stage.load())


def _at_another_size(tmp_path: Path, decisions: dict | None) -> Path:
    """A 128-px red detector whose sidecar says it was trained (and its decision fitted) at 64 px."""
    path = build_red_detector(tmp_path / "red128.onnx", size=128)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta.update(input_size=64, decision={"version": 1, "features": ["max_any"], "bias": 0.0, "weights": [4.0]})
    if decisions is not None:
        meta["decisions_by_input_size"] = decisions
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def test_another_input_size_needs_a_decision_fitted_at_that_size(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    stage = create_stage("roadwork_detector", "det", {"model": str(_at_another_size(tmp_path, None)), "input_size": 128})
    with pytest.raises(ModelFileError, match="decisions_by_input_size"):
        asyncio.run(stage.load())


def test_another_input_size_reads_its_own_decision(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    glance = {"version": 1, "features": ["max_any"], "bias": -3.0, "weights": [4.0]}
    path = _at_another_size(tmp_path, {"128": glance})
    image = Image(_blue_with_red(box=(64, 32, 96, 64)))
    native = create_stage("roadwork_detector", "det", {"model": str(path)})
    small = create_stage("roadwork_detector", "det", {"model": str(path), "input_size": 128})
    # The same boxes would score alike under one decision; the glance's own bias of -3 is what moves it.
    (z_small,) = (o.log_odds for o in run_stage(small, [image]))
    box = run_stage(small, [image])[0].evidence.boxes[0]
    from workzone.object_evidence import clipped_logit

    assert z_small == pytest.approx(-3.0 + 4.0 * float(clipped_logit(box.score)), abs=1e-3)
    with pytest.raises(Exception):  # the 128-px graph cannot run at the sidecar's native 64 px
        run_stage(native, [image])


@pytest.mark.parametrize("value", [None, 0])
def test_a_sidecar_step_set_to_null_or_zero_is_no_step(tmp_path: Path, value):
    # A sidecar copied to score a model without its as-trained JPEG round trip says so with null (or 0).
    pytest.importorskip("onnxruntime")
    path = build_red_detector(tmp_path / "red.onnx", size=64)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta.update(source_max_side=value, source_jpeg_quality=value)
    path.with_suffix(".json").write_text(json.dumps(meta))
    runner = rd.ObjectDetectorRunner(path)
    assert runner.source_max_side is None and runner.source_jpeg_quality is None
    meta.update(source_max_side=48, source_jpeg_quality=72)
    path.with_suffix(".json").write_text(json.dumps(meta))
    runner = rd.ObjectDetectorRunner(path)
    assert (runner.source_max_side, runner.source_jpeg_quality) == (48, 72)


# The default (the ten-class object detector), and the superseded cone detector a pipeline may still name.
@pytest.mark.parametrize("params", [{}, {"model": "builtin:cone_detector.onnx"}], ids=["default", "cone_detector"])
@pytest.mark.skipif(not SHIPPED.is_file() or not (DATA / "boxes.csv").is_file(), reason="needs the shipped model and roadwork-v1")
def test_shipped_model_finds_a_boxed_dev_cone_and_stays_quiet_on_empty_roads(params):
    import csv

    from workzone.io.images import decode_image

    with (DATA / "manifest.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "dev"]
    with (DATA / "boxes.csv").open() as fh:
        boxes = [r for r in csv.DictReader(fh)]
    pos_path = next(r["path"] for r in rows if r["source"] == "TraCon" and r["label"] == "1"
                    and sum(b["path"] == r["path"] for b in boxes) == 1)
    b = next(b for b in boxes if b["path"] == pos_path)
    img = decode_image(DATA / pos_path)
    cx, cy, w, h = (float(b[k]) for k in ("cx", "cy", "w", "h"))
    truth = np.array([[(cx - w / 2) * img.width, (cy - h / 2) * img.height, (cx + w / 2) * img.width, (cy + h / 2) * img.height]])
    negs = [decode_image(DATA / r["path"]) for r in rows if r["source"] == "CamVid"][:8]
    stage = create_stage("roadwork_detector", "det", params)
    outs = run_stage(stage, [img, *negs])
    assert stage.params.model == params.get("model", "builtin:roadwork_objects.onnx")
    top = outs[0].evidence.boxes[0]
    assert box_iou(np.array([[top.x1, top.y1, top.x2, top.y2]]), truth)[0, 0] > 0.5
    assert outs[0].log_odds > np.median([o.log_odds for o in outs[1:]])


@pytest.mark.skipif(not (DATA / "manifest.csv").is_file(), reason="needs roadwork-v1")
def test_runs_spread_by_image_give_the_bits_of_runs_of_four_over_every_thread():
    from workzone.io.images import decode_image
    from workzone.throughput.parity import dev_jpegs

    imgs = [decode_image(b) for _, b in dev_jpegs(DATA, limit=12)]
    model = StageContext().resolve("builtin:roadwork_objects.onnx")
    by_image = rd.ObjectDetectorRunner(model, threads=2, parallel="images")
    by_op = rd.ObjectDetectorRunner(model, threads=2, parallel="operators")
    try:
        a, za, _ = by_image.decide(imgs, batch_size=1)
        b, zb, _ = by_op.decide(imgs, batch_size=8)
    finally:
        by_image.close()
        by_op.close()
    assert za == zb and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert by_image.sessions.narrow is not None and by_op.sessions.narrow is None


def test_the_shipped_detector_glances_at_224_px_with_its_own_decision():
    pytest.importorskip("onnxruntime")
    shipped = SHIPPED.parent / "roadwork_objects.onnx"
    meta = json.loads(shipped.with_suffix(".json").read_text())
    assert meta["decisions_by_input_size"]["224"] != meta["decision"]
    image = Image(_blue_with_red(w=640, h=360, box=(300, 200, 330, 260)))
    glance = create_stage("roadwork_detector", "g", {"input_size": 224})
    full = create_stage("roadwork_detector", "f", {})
    (g,), (f,) = run_stage(glance, [image]), run_stage(full, [image])
    assert np.isfinite(g.log_odds) and np.isfinite(f.log_odds) and g.log_odds != f.log_odds
