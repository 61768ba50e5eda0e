"""Fused leave-one-source-out, fp16 weight storage, and leave-one-source-out detector data."""

from pathlib import Path

import numpy as np
import pytest

from workzone_train.data import Sample
from workzone_train.loso_fusion import fuse_held_out


def _samples() -> tuple[list[Sample], dict[str, list[float | None]]]:
    rng = np.random.default_rng(0)
    samples, clf, det = [], [], []
    for i in range(200):
        src = "A" if i < 60 else "B"
        split = "dev" if i % 2 else "train"
        label = int(i % 4 < 2)
        samples.append(Sample(Path(f"{i}.jpg"), f"images/{i}.jpg", label, src, split))
        if src == "B":  # B: the classifier separates the classes
            clf.append((2.0 if label else -2.0) + float(rng.normal(0, 0.5)))
        else:  # A, the held-out source: the classifier is shifted down, as for an unseen camera
            clf.append((0.5 if label else -3.0) + float(rng.normal(0, 0.5)))
        det.append(None if i % 7 == 0 else (1.0 if label else -1.0))
    return samples, {"classifier": clf, "cones": det}


def test_fusion_is_fitted_on_the_other_sources_dev_only() -> None:
    samples, scores = _samples()
    res = fuse_held_out(samples, scores, "A")
    a = [s for s in samples if s.source == "A"]
    assert res["held_out"]["n"] == len(a)
    b_dev = [s for s in samples if s.source == "B" and s.split == "dev"]
    assert res["dev_others"]["n"] == len(b_dev)
    assert res["dev_others"]["mcc"] > 0.9
    assert set(res["fusion"]["weights"]) == {"classifier", "cones"}
    # Changing the held-out source's scores must not change the fitted fusion.
    moved = {k: list(v) for k, v in scores.items()}
    for i, s in enumerate(samples):
        if s.source == "A":
            moved["classifier"][i] = 50.0
    assert fuse_held_out(samples, moved, "A")["fusion"] == res["fusion"]
    # And the held-out metrics are read at fused p > 0.5 on A: all positive now.
    assert fuse_held_out(samples, moved, "A")["held_out"]["recall"] == 1.0


def test_store_weights_fp16_halves_weights_and_keeps_outputs(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from workzone_train.export import store_weights_fp16

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 32)).astype(np.float32)
    b = np.float32([0.5])  # below min_elements: stays fp32
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    dst = store_weights_fp16(src, tmp_path / "m16.onnx")
    m = onnx.load(str(dst))
    types = {i.name: i.data_type for i in m.graph.initializer}
    assert types == {"w__fp16": TensorProto.FLOAT16, "b": TensorProto.FLOAT}
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    x = rng.normal(size=(3, 64)).astype(np.float32)
    y32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    y16 = sess.run(None, {"x": x})[0]
    assert y16.dtype == np.float32 and sess.get_inputs()[0].type == "tensor(float)"
    assert np.abs(y16 - y32).max() < 0.05 and not np.array_equal(y16, y32)  # rounded weights, fp32 maths


def test_detector_items_leave_a_source_out_and_paste_into_other_scenes(tmp_path: Path) -> None:
    from PIL import Image

    from workzone_train.detector_data import load_det_items

    (tmp_path / "images").mkdir()
    rows, boxes = ["path,label,split,source,notes"], ["path,class,cx,cy,w,h"]
    for i, (src, label) in enumerate([("CamVid", 0), ("CamVid", 0), ("TraCon", 1), ("TraCon", 0), ("99succubus", 0)]):
        Image.new("RGB", (32, 24)).save(tmp_path / "images" / f"{i}.jpg")
        rows.append(f"images/{i}.jpg,{label},train,{src},")
        if label:
            boxes.append(f"images/{i}.jpg,cone,0.5,0.5,0.2,0.4")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "boxes.csv").write_text("\n".join(boxes) + "\n")
    m, b = tmp_path / "manifest.csv", tmp_path / "boxes.csv"
    default = load_det_items(m, b, ["train"])
    assert sorted((it.source, it.scene) for it in default) == [
        ("CamVid", True), ("CamVid", True), ("TraCon", False), ("TraCon", False)]
    loso = load_det_items(m, b, ["train"], exclude_sources=["CamVid"], scene_sources=["TraCon", "99succubus"])
    assert sorted((it.source, it.label, it.scene) for it in loso) == [
        ("99succubus", 0, True), ("TraCon", 0, True), ("TraCon", 1, False)]
