"""The object_verifier stage: crops at full resolution, the verifier's answers, the verified decision, evidence.

The verifier here is a tiny ONNX graph written by the test (mean colour of the crop -> softmax over classes, so
an orange crop is a cone and a grey one is nothing); the stage's code path is the real one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from workzone.errors import ModelFileError
from workzone.verified_evidence import (VERIFIED_FEATURE_VERSION, VERIFIED_LOGIT_CLIP, candidate_crops,
                                        verified_feature_names, verified_features)
from workzone.stages.object_verifier import ObjectVerifierParams, ObjectVerifierStage, float_graph_on_gpu
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
               "decision": decision or {"version": VERIFIED_FEATURE_VERSION,
                                        "features": ["ver_max", "channelizer_n", "sign_max"],
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
    assert empty["ver_max"] == empty["det_max"] == -VERIFIED_LOGIT_CLIP and empty["n_verified"] == 0.0


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


def test_on_a_gpu_the_stage_opens_the_float_graph_an_int8_one_names(tmp_path: Path) -> None:
    # Two graphs that answer differently: "verifier.onnx" (the float one) and "fast.onnx", whose sidecar says it was
    # made from the float one. On CUDA the stage must answer as the float graph; on the CPU as the one it was given.
    float_graph = _tiny_verifier(tmp_path)
    from onnx import load, numpy_helper, save

    model = load(str(float_graph))
    w = next(i for i in model.graph.initializer if i.name == "w")
    w.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w), "w"))
    fast = tmp_path / "fast.onnx"
    save(model, str(fast))
    meta = json.loads(float_graph.with_suffix(".json").read_text())
    fast.with_suffix(".json").write_text(json.dumps({**meta, "quantisation": {"float_model": float_graph.name}}))

    assert float_graph_on_gpu(fast, "cuda:0") == float_graph
    assert float_graph_on_gpu(fast, "cpu") == fast
    assert float_graph_on_gpu(float_graph, "cuda") == float_graph  # no quantisation block: itself
    cone = Box("cone", 0.6, 20, 40, 40, 80)

    def confirmed(device: str) -> list[str]:
        stage = ObjectVerifierStage("verify", ObjectVerifierParams(model="fast.onnx"),
                                    context=StageContext(base_dir=tmp_path, device=device))
        [out] = _run(stage, [Image(_scene())], [(_report((cone,)),)])
        return [b.label for b in out.evidence.boxes]

    assert confirmed("cpu") == []          # the negated graph calls the orange block a look-alike
    assert confirmed("cuda") == ["cone"]   # the float graph it names confirms it


MODELS = Path(__file__).resolve().parents[2] / "src" / "workzone" / "models"
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_the_int8_verifier_is_made_from_the_shipped_float_one() -> None:
    int8_meta = json.loads((MODELS / "roadwork_verifier_int8.json").read_text())
    float_meta = json.loads((MODELS / "roadwork_verifier.json").read_text())
    quant = int8_meta.pop("quantisation")
    assert int8_meta == float_meta, ("roadwork_verifier_int8.json must repeat roadwork_verifier.json (crops, classes, "
                                     "decision): rebuild it with `python benchmarks/int8_verifier.py --write`")
    made_from = hashlib.sha256((MODELS / quant["float_model"]).read_bytes()).hexdigest()
    assert made_from == quant["made_from_sha256"], (
        "roadwork_verifier.onnx changed since the int8 graph was made from it: rebuild and re-check it with "
        "`python benchmarks/int8_verifier.py --write`")
    assert quant["parity"]["within_0.02"] >= 0.99 and quant["parity"]["away_from_threshold"] == 0
    assert (MODELS / "roadwork_verifier_int8.onnx").stat().st_size < (MODELS / "roadwork_verifier.onnx").stat().st_size


def _sample_jpegs() -> list[tuple[str, bytes]]:
    """The two shipped samples, each also mirrored and cut to its left and right two thirds: six scenes."""
    import io

    from PIL import Image as PILImage

    out = []
    for path in sorted(SAMPLES.glob("*.jpg")):
        im = PILImage.open(path).convert("RGB")
        w, h = im.size
        for k, view in enumerate((im, im.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT), im.crop((0, 0, 2 * w // 3, h)),
                                  im.crop((w // 3, 0, w, h)))):
            buf = io.BytesIO()
            view.save(buf, "JPEG", quality=90)
            out.append((f"{path.stem}-{k}", buf.getvalue()))
    return out


def test_the_default_with_the_int8_verifier_decides_as_with_the_float_one() -> None:
    pytest.importorskip("onnxruntime")
    from workzone.config.backend import with_stage_params
    from workzone.config.loader import load_pipeline_config
    from workzone.throughput.parity import pipeline_probabilities

    cfg, path = load_pipeline_config("default")
    [verify] = [s for t in cfg.tiers for s in t.stages if s.kind == "object_verifier"]
    assert verify.params.model == "builtin:roadwork_verifier_int8.onnx"  # what the default ships
    items = _sample_jpegs()
    p_int8 = pipeline_probabilities(cfg, path.parent, items, batch=8)
    p_float = pipeline_probabilities(with_stage_params(cfg, {verify.name: {"model": "builtin:roadwork_verifier.onnx"}}),
                                     path.parent, items, batch=8)
    assert ((p_float > 0.5).sum(), (p_float <= 0.5).sum()) >= (1, 1)  # both answers are among the scenes
    assert np.abs(p_int8 - p_float).max() <= 0.02, list(zip([n for n, _ in items], p_float, p_int8))
    assert ((p_int8 > 0.5) == (p_float > 0.5)).all()


def test_the_int8_verifier_answers_each_candidate_as_the_float_one() -> None:
    from workzone.io.images import decode_image
    from workzone.object_evidence import clipped_logit
    from workzone.stages._onnx import open_session
    from workzone.stages.roadwork_detector import ObjectDetectorRunner
    from workzone.verified_evidence import select_candidates

    meta = json.loads((MODELS / "roadwork_verifier.json").read_text())
    runner = ObjectDetectorRunner(MODELS / "roadwork_objects.onnx")
    crops = []
    for _, blob in _sample_jpegs():
        im = decode_image(blob)
        c = select_candidates(runner.detect([im])[0], floor=0.02, most=8)
        crops.append(candidate_crops(im.pixels, c[:, :4], size=meta["crop_size"], context=meta["context"],
                                     max_side=meta["source_max_side"]))
    x = np.concatenate(crops)
    assert len(x) >= 12
    p_float, p_int8 = (open_session(MODELS / name).run(None, {"crops": x})[0]
                       for name in ("roadwork_verifier.onnx", "roadwork_verifier_int8.onnx"))
    none = [meta["classes"].index(c) for c in ("none", "sign_other")]
    obj_float, obj_int8 = 1 - p_float[:, none].sum(1), 1 - p_int8[:, none].sum(1)
    # The log-odds of P(work-zone object) is what the verified decision reads. On the 3,707 dev crops they moved by
    # a median 0.02 and at most 0.44 (benchmarks/results/int8_verifier.md); the whole graph in int8 moved them by a
    # median 0.15, and lost the decision.
    dz = np.abs(clipped_logit(obj_int8) - clipped_logit(obj_float))
    assert np.median(dz) <= 0.05 and dz.max() <= 0.5, (np.median(dz), dz.max())
    assert (p_int8.argmax(1) == p_float.argmax(1)).all()  # every crop named as the float graph names it


def test_the_torch_backend_answers_as_onnxruntime(tmp_path: Path) -> None:
    # The crops cut on the torch device (here the CPU) and the graph run through torch: the same verified decision and
    # the same evidence as Pillow and onnxruntime, image by image, in one batch that mixes every case.
    pytest.importorskip("torch")
    cone, blue = Box("cone", 0.6, 20, 40, 40, 80), Box("sign", 0.7, 150, 40, 170, 80)
    edge = Box("drum", 0.5, 190, 100, 200, 120)  # its window reaches past the image
    failed = StageReport("objects", "roadwork_detector", 1, None, Evidence(), 1.0, error="boom", error_type="StageError")
    big = np.kron(_scene(), np.ones((8, 8, 1), np.uint8))  # 960 x 1600: crops first brought to the trained detail
    images = [Image(_scene()), Image(_scene()), Image(_scene()), Image(big)]
    reports = [(_report((cone, blue, edge)),), (_report(()),), (failed,),
               (_report((Box("cone", 0.8, 160, 320, 320, 640),)),)]
    _tiny_verifier(tmp_path)
    meta = json.loads((tmp_path / "verifier.json").read_text())
    (tmp_path / "verifier.json").write_text(json.dumps({**meta, "source_max_side": 640}))

    def run(backend: str):
        stage = ObjectVerifierStage("verify", ObjectVerifierParams(model="verifier.onnx", backend=backend),
                                    context=StageContext(base_dir=tmp_path))
        return _run(stage, images, reports), stage

    ref, _ = run("onnxruntime")
    got, stage = run("torch")
    assert [o.log_odds is None for o in got] == [False, False, True, False]
    for r, g in zip(ref, got):
        assert (r.log_odds is None and g.log_odds is None) or r.log_odds == pytest.approx(g.log_odds, abs=1e-6)
        assert [b.label for b in r.evidence.boxes] == [b.label for b in g.evidence.boxes]
        assert r.evidence.notes == g.evidence.notes
    assert [b.label for b in got[0].evidence.boxes] == ["cone"] and [b.label for b in got[3].evidence.boxes] == ["cone"]


def test_the_torch_backend_warms_the_runner_buckets_it_will_use(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    stage = _stage(tmp_path, backend="torch")

    async def go():
        await stage.load()
        try:
            runner = stage._torch_runner()
            assert runner is not None and runner.pads is False  # eager on the CPU: no buckets, nothing to warm
            await stage.warmup()
            return runner.cold_runs
        finally:
            await stage.aclose()

    assert asyncio.run(go()) >= 1  # the warm-up ran the graph through torch


def test_batched_features_equal_each_image_s_own() -> None:
    # The stage forms a whole batch's features in one pass; each row must be what the single-image form (the one the
    # lab fits the decision on) gives, including images without candidates and look-alike detector boxes.
    from workzone.verified_evidence import verified_features_batch

    rng = np.random.default_rng(5)
    classes = ["cone", "drum", "post", "sign", "worker", "sign_other", "none"]
    counts = [int(rng.integers(0, 6)) for _ in range(200)]
    m = sum(counts)
    scores = rng.uniform(0.05, 1.0, m)
    labels = list(rng.choice(["cone", "sign", "worker", "sign_other"], m))
    probs = rng.dirichlet(np.full(len(classes), 0.5), m) if m else np.zeros((0, len(classes)))
    got = verified_features_batch(scores, labels, probs, counts, classes)
    k = 0
    for i, n in enumerate(counts):
        want = verified_features(scores[k:k + n], labels[k:k + n], probs[k:k + n], classes)
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-12)
        k += n
    assert (got[:, 3] > 0).any() and (np.array(counts) == 0).any()  # confirmed candidates and empty images both met


def test_confident_answers_saturate_so_certainty_beyond_the_clip_does_not_move_the_decision() -> None:
    # Version 2 of the features: a verifier at P 0.96 and at P 0.999 about the same cone give the same features,
    # so the decision does not swing with how sure the verifier is about an object it already confirmed
    # (benchmarks/results/verified_steepness.md); below the clip the logit still moves.
    classes = ["cone", "none"]
    names = verified_feature_names()

    def feats(p: float) -> dict:
        return dict(zip(names, verified_features(np.array([0.9]), ["cone"], np.array([[p, 1 - p]]), classes)))

    sure, surer, unsure = feats(0.96), feats(0.999), feats(0.8)
    assert sure["ver_max"] == surer["ver_max"] == VERIFIED_LOGIT_CLIP == 3.0
    assert sure["channelizer_max"] == surer["channelizer_max"] == VERIFIED_LOGIT_CLIP
    assert unsure["ver_max"] == pytest.approx(np.log(4.0)) and unsure["ver_max"] < sure["ver_max"]
