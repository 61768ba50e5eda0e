"""The object_verifier stage: crops at full resolution, the verifier's answers, the verified decision, evidence.

The verifier here is a tiny ONNX graph written by the test (mean colour of the crop -> softmax over classes, so
an orange crop is a cone and a grey one is nothing); the stage's code path is the real one.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from workzone.errors import ModelFileError
from workzone.verified_evidence import candidate_crops, verified_feature_names, verified_features
from workzone.stages.object_verifier import ObjectVerifierParams, ObjectVerifierStage
from workzone.stages.base import StageContext
from workzone.types import Box, Evidence, Image, StageReport

CLASSES = ["cone", "sign", "sign_other", "none"]


def _tiny_verifier(folder: Path, decision: dict | None = None) -> Path:
    """crops (N, 3, S, S) -> probs (N, 4): orange -> cone, blue -> sign_other, grey -> none."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[10.0, 0.0, -10.0, 0.0],    # R
                  [0.0, 0.0, 0.0, 0.0],       # G
                  [-10.0, 0.0, 10.0, 0.0]], np.float32)  # B
    b = np.array([-0.5, -3.0, -0.5, 0.5], np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["crops"], ["m"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["z0"]), helper.make_node("Add", ["z0", "b"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probs"], axis=1)],
        "tiny_verifier",
        [helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = folder / "verifier.onnx"
    onnx.save(model, str(path))
    sidecar = {"crop_size": 16, "context": 1.5, "classes": CLASSES, "candidate_floor": 0.1, "max_candidates": 4,
               "decision": decision or {"version": 1, "features": ["ver_max", "channelizer_n", "sign_max"],
                                        "bias": -1.0, "weights": [1.0, 1.0, 0.5]}}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def _scene() -> np.ndarray:
    px = np.full((120, 200, 3), 128, np.uint8)
    px[40:80, 20:40] = (250, 120, 20)   # an orange cone-like block
    px[40:80, 150:170] = (30, 40, 220)  # a blue sign-like block
    return px


def _report(boxes: tuple[Box, ...], stage: str = "objects", log_odds: float | None = 0.5) -> StageReport:
    return StageReport(stage, "roadwork_detector", 1, log_odds, Evidence(boxes=boxes), 1.0)


def _run(stage: ObjectVerifierStage, images: list[Image], reports: list[tuple[StageReport, ...]]):
    async def go():
        await stage.load()
        try:
            return await stage.predict(images, evidence=reports)
        finally:
            await stage.aclose()

    return asyncio.run(go())


def _stage(tmp_path: Path, **params) -> ObjectVerifierStage:
    _tiny_verifier(tmp_path)
    return ObjectVerifierStage("verify", ObjectVerifierParams(model="verifier.onnx", **params),
                               context=StageContext(base_dir=tmp_path))


def test_verifier_confirms_the_cone_and_rejects_the_lookalike(tmp_path: Path) -> None:
    img = Image(_scene())
    cone = Box("cone", 0.6, 20, 40, 40, 80)
    blue = Box("sign", 0.7, 150, 40, 170, 80)
    grey = Box("drum", 0.4, 90, 40, 110, 80)
    low = Box("cone", 0.05, 60, 10, 70, 20)  # under the candidate floor: never verified
    [out] = _run(_stage(tmp_path), [img], [(_report((cone, blue, grey, low)),)])
    assert [(b.label, (b.x1, b.y1)) for b in out.evidence.boxes] == [("cone", (20, 40))]
    notes = "\n".join(out.evidence.notes)
    assert "1 of 3 candidate(s) confirmed" in notes
    assert "sign 0.70 at (150,40)-(170,80): verifier says sign_other" in notes
    assert "drum 0.40 at (90,40)-(110,80): verifier says none" in notes
    assert "decided by:" in notes

    [alone] = _run(_stage(tmp_path), [img], [(_report((blue, grey)),)])
    assert alone.log_odds is not None and out.log_odds is not None
    assert out.log_odds > alone.log_odds  # the confirmed cone is what raised it
    assert alone.evidence.boxes == ()


def test_no_candidates_is_a_decision_not_an_abstention(tmp_path: Path) -> None:
    [out] = _run(_stage(tmp_path), [Image(_scene())], [(_report(()),)])
    assert out.log_odds is not None and out.log_odds < 0
    assert "0 of 0 candidate(s)" in out.evidence.notes[0]


def test_abstains_when_the_detector_did_not_report(tmp_path: Path) -> None:
    failed = StageReport("objects", "roadwork_detector", 1, None, Evidence(), 1.0, error="boom", error_type="StageError")
    outs = _run(_stage(tmp_path), [Image(_scene()), Image(_scene())], [(), (failed,)])
    assert [o.log_odds for o in outs] == [None, None]
    assert "did not report" in outs[0].evidence.notes[0]


def test_params_override_the_sidecar_candidates(tmp_path: Path) -> None:
    boxes = tuple(Box("cone", 0.9 - 0.1 * i, 20, 40, 40, 80) for i in range(4))
    [out] = _run(_stage(tmp_path, max_candidates=2), [Image(_scene())], [(_report(boxes),)])
    assert "2 of 2 candidate(s) confirmed" in out.evidence.notes[0]


def test_a_sidecar_without_a_decision_names_the_file_and_key(tmp_path: Path) -> None:
    path = _tiny_verifier(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta["decision"]
    path.with_suffix(".json").write_text(json.dumps(meta))
    stage = ObjectVerifierStage("verify", ObjectVerifierParams(model="verifier.onnx"), context=StageContext(base_dir=tmp_path))
    with pytest.raises(ModelFileError, match=r"verifier\.json.*decision"):
        asyncio.run(stage.load())


def test_crops_are_centred_with_context_and_black_beyond_the_image() -> None:
    px = np.full((50, 50, 3), 200, np.uint8)
    # a 10-px box in the top-left corner: with context 3 the 30-px crop reaches 10 px beyond the edge
    c = candidate_crops(px, np.array([[0, 0, 10, 10]]), size=30, context=3.0)
    assert c.shape == (1, 3, 30, 30)
    assert c[0, :, :8, :8].max() == 0.0 and abs(c[0, :, 20:, 20:].mean() - 200 / 255) < 1e-3


def test_class_aware_features_count_only_what_the_verifier_confirms() -> None:
    names = verified_feature_names()
    classes = ["cone", "drum", "sign", "sign_other", "none"]
    probs = np.array([[0.9, 0.0, 0.0, 0.0, 0.1],   # a cone
                      [0.8, 0.1, 0.0, 0.0, 0.1],   # another cone
                      [0.0, 0.0, 0.1, 0.85, 0.05],  # a warning triangle
                      [0.0, 0.0, 0.0, 0.0, 1.0]])  # nothing
    f = dict(zip(names, verified_features(np.array([0.5, 0.4, 0.9, 0.3]), ["cone", "cone", "sign", "drum"], probs,
                                          classes)))
    assert f["n_verified"] == pytest.approx(np.log1p(2))
    assert f["channelizer_n"] == pytest.approx(np.log1p(2)) and f["sign_n"] == 0.0
    assert f["sign_max"] < 0  # 0.1 for the triangle: not a road-work sign
    empty = dict(zip(names, verified_features(np.zeros(0), [], np.zeros((0, 5)), classes)))
    assert empty["ver_max"] == empty["det_max"] == -6.0 and empty["n_verified"] == 0.0


def test_crops_of_a_larger_image_hold_the_detail_of_the_trained_size() -> None:
    """The verifier learnt from images of at most ``max_side`` px: a crop of a 3x larger image is first brought to
    the detail it would have there (closer to the trained crop than the sharp one)."""
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (180, 240, 3), dtype=np.uint8)
    small = np.asarray(PILImage.fromarray(big).resize((80, 60), PILImage.BILINEAR))  # how training images were made
    box = np.array([[30, 20, 50, 40]])
    want = candidate_crops(small, box, size=64, context=2.0)
    same = candidate_crops(big, box * 3, size=64, context=2.0, max_side=80)
    sharp = candidate_crops(big, box * 3, size=64, context=2.0)
    assert np.abs(same - want).mean() < 0.5 * np.abs(sharp - want).mean()


@pytest.mark.parametrize("threads", [1, 2])
def test_images_spread_over_workers_give_what_one_run_at_a_time_gives(tmp_path: Path, threads: int) -> None:
    cone, blue = Box("cone", 0.6, 20, 40, 40, 80), Box("sign", 0.7, 150, 40, 170, 80)
    rng = np.random.default_rng(1)
    images = [Image(np.clip(_scene().astype(int) + rng.integers(-40, 40, (120, 200, 3)), 0, 255).astype(np.uint8))
              for _ in range(5)]
    reports = [(_report((cone, blue)),), (_report(()),), (), (_report((blue,)),), (_report((cone,)),)]
    by_op = _run(_stage(tmp_path, parallel="operators", threads=threads), images, reports)
    by_image = _run(_stage(tmp_path, parallel="images", threads=threads), images, reports)
    assert [o.log_odds for o in by_image] == [o.log_odds for o in by_op]
    assert [o.evidence for o in by_image] == [o.evidence for o in by_op]
    assert by_image[2].log_odds is None and by_image[1].log_odds is not None  # abstains / no candidates, in place


def test_an_image_without_candidates_skips_the_model_and_keeps_its_answer(tmp_path: Path) -> None:
    """The verifier runs only on images with a candidate above its floor; the others get the decision of no
    candidates, the same alone as beside images that do run it."""
    stage = _stage(tmp_path)
    cone, low = Box("cone", 0.6, 20, 40, 40, 80), Box("cone", 0.05, 20, 40, 40, 80)  # low: under the 0.1 floor
    made: list[int] = []
    crops = stage._crops
    stage._crops = lambda item: (made.append(len(item[1])), crops(item))[1]  # type: ignore[method-assign]
    img = Image(_scene())
    mixed = _run(stage, [img, img, img], [(_report(()),), (_report((cone,)),), (_report((low,)),)])
    assert made == [1]  # one image's crops went to the model
    [alone_empty] = _run(_stage(tmp_path), [img], [(_report(()),)])
    [alone_cone] = _run(_stage(tmp_path), [img], [(_report((cone,)),)])
    assert mixed[0].log_odds == mixed[2].log_odds == alone_empty.log_odds
    assert mixed[1].log_odds == alone_cone.log_odds != alone_empty.log_odds
