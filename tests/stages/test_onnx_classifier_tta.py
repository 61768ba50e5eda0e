"""Tests for the test-time augmentation (flip, five crops) of workzone.stages.onnx_classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.stages._support import run_stage

from workzone.errors import ConfigError
from workzone.io.images import resize_for_model
from workzone.stages.onnx_classifier import five_crop_boxes
from workzone.stages.registry import create_stage
from workzone.types import Image

SIZE = 16


def _build_mask_model(path: Path, mask: np.ndarray) -> Path:
    """A real ONNX classifier whose logit is ``sum(image * mask)``: every pixel position matters.

    With a random mask, the logit of a crop, a corner or a mirror image differs from the whole
    image's, so any view missing from (or added to) the average changes the stage's score.
    """
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Mul", ["image", "mask"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axes"], ["logit"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "mask",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"])],
        initializer=[numpy_helper.from_array(mask.astype(np.float32), "mask"),
                     numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    path.with_suffix(".json").write_text(json.dumps({"input_size": SIZE, "resize": "squash"}))
    return path


@pytest.fixture
def mask() -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 0.05, (3, SIZE, SIZE))


@pytest.fixture
def mask_model(tmp_path: Path, mask: np.ndarray) -> Path:
    return _build_mask_model(tmp_path / "mask.onnx", mask)


def _image(width: int, height: int, seed: int) -> Image:
    return Image(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _stage(model: Path, **params):
    return create_stage("onnx_classifier", "tta", {"model": str(model), **params})


def _reference(pixels: np.ndarray, mask: np.ndarray, *, crops: bool, flip: bool, scale: float = 0.8) -> float:
    """The expected TTA logit, computed here without the stage: mean of mask . view over the views."""
    h, w = pixels.shape[:2]
    parts = [pixels]
    if crops:
        cw, ch = round(w * scale), round(h * scale)
        for x0, y0 in [((w - cw) // 2, (h - ch) // 2), (0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]:
            parts.append(pixels[y0:y0 + ch, x0:x0 + cw])
    logits = []
    for part in parts:
        x = resize_for_model(np.ascontiguousarray(part), SIZE, "squash").astype(np.float64)
        logits.append(float((x * mask).sum()))
        if flip:
            logits.append(float((x[:, :, ::-1] * mask).sum()))
    return float(np.mean(logits))


# -- crop geometry ----------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "scale", "expected"), [
    ((100, 50), 0.8, [(10, 5, 90, 45), (0, 0, 80, 40), (20, 0, 100, 40), (0, 10, 80, 50), (20, 10, 100, 50)]),
    ((10, 10), 0.5, [(2, 2, 7, 7), (0, 0, 5, 5), (5, 0, 10, 5), (0, 5, 5, 10), (5, 5, 10, 10)]),
    ((3, 7), 1.0, [(0, 0, 3, 7)] * 5),
    ((1, 1), 0.3, [(0, 0, 1, 1)] * 5),  # never an empty crop
])
def test_five_crop_boxes(size, scale, expected):
    assert five_crop_boxes(*size, scale) == expected


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5])
def test_five_crop_boxes_rejects_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        five_crop_boxes(10, 10, scale)


# -- views and averaging ----------------------------------------------------------------------

@pytest.mark.parametrize(("params", "views_per_image"), [
    ({}, 1),
    ({"flip": True}, 2),
    ({"crops": 5}, 6),
    ({"crops": 5, "flip": True}, 12),
    ({"crops": 5, "tiles": 2}, 4 * 6),
    ({"crops": 5, "flip": True, "tiles": 2, "include_full": True}, 5 * 12),
])
def test_number_of_views_reaching_the_model(mask_model, params, views_per_image):
    stage = _stage(mask_model, batch_size=7, **params)
    seen: list[int] = []
    infer = stage._infer

    def counting(x):
        seen.append(len(x))
        return infer(x)

    stage._infer = counting
    run_stage(stage, [_image(40, 30, 1), _image(25, 33, 2)], warmup=False)
    assert sum(seen) == 2 * views_per_image
    assert max(seen) <= 7


@pytest.mark.parametrize(("crops", "flip"), [(0, True), (5, False), (5, True)])
def test_tta_logit_is_the_mean_over_views(mask_model, mask, crops, flip):
    images = [_image(50, 40, 3), _image(37, 61, 4)]
    out = run_stage(_stage(mask_model, crops=crops, flip=flip, batch_size=5), images)
    for img, o in zip(images, out):
        assert o.log_odds == pytest.approx(_reference(img.pixels, mask, crops=bool(crops), flip=flip), abs=1e-4)


def test_crop_scale_changes_the_crops(mask_model, mask):
    img = _image(60, 45, 5)
    wide, narrow = run_stage(_stage(mask_model, crops=5, crop_scale=0.9), [img])[0], \
        run_stage(_stage(mask_model, crops=5, crop_scale=0.5), [img])[0]
    assert wide.log_odds == pytest.approx(_reference(img.pixels, mask, crops=True, flip=False, scale=0.9), abs=1e-4)
    assert narrow.log_odds == pytest.approx(_reference(img.pixels, mask, crops=True, flip=False, scale=0.5), abs=1e-4)
    assert abs(wide.log_odds - narrow.log_odds) > 1e-3


def test_corner_evidence_is_averaged_not_maxed(tmp_path):
    """A model that only sees the top-left quarter: the corner crop scores it, the mean dilutes it."""
    m = np.zeros((3, SIZE, SIZE))
    m[:, : SIZE // 2, : SIZE // 2] = 1.0 / (3 * (SIZE // 2) ** 2)  # logit = mean brightness of the top-left quarter
    model = _build_mask_model(tmp_path / "corner.onnx", m)
    px = np.zeros((40, 40, 3), np.uint8)
    px[:16, :16] = 255  # bright top-left block (0.4 of each side)
    plain, tta = run_stage(_stage(model), [Image(px)])[0], run_stage(_stage(model, crops=5), [Image(px)])[0]
    # The whole image's top-left quarter is 16/20 = 0.64 bright; the crops see between 0 and all of the block.
    assert plain.log_odds == pytest.approx(0.64, abs=0.05)
    assert tta.log_odds == pytest.approx(_reference(px, m, crops=True, flip=False), abs=1e-4)
    assert tta.log_odds != pytest.approx(plain.log_odds, abs=1e-3)


def test_batched_scores_equal_single_image_scores(mask_model):
    images = [_image(30 + 7 * i, 50 - 5 * i, 10 + i) for i in range(4)]
    stage_params = {"crops": 5, "flip": True, "tiles": 2, "include_full": True, "pool": "mean", "batch_size": 3}
    batched = run_stage(_stage(mask_model, **stage_params), images)
    single = [run_stage(_stage(mask_model, **stage_params), [img])[0] for img in images]
    assert [o.log_odds for o in batched] == pytest.approx([o.log_odds for o in single], abs=1e-5)
    # Distinct images must not share a score (catches views credited to the wrong image).
    assert len({round(o.log_odds, 4) for o in batched}) == len(images)


def test_tta_is_noted_in_the_evidence(mask_model):
    (out,) = run_stage(_stage(mask_model, crops=5, flip=True, crop_scale=0.75), [_image(20, 20, 6)])
    assert out.evidence.notes == (
        "TTA: mean logit of 12 views per region (whole + 5 crops at 0.75, each also flipped)",)
    (flipped,) = run_stage(_stage(mask_model, flip=True), [_image(20, 20, 6)])
    assert flipped.evidence.notes == ("TTA: mean logit of 2 views per region (as is and mirrored)",)
    (plain,) = run_stage(_stage(mask_model), [_image(20, 20, 6)])
    assert plain.evidence.notes == ()


# -- config validation ------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "field"), [
    ({"crops": 1}, "crops"),
    ({"crops": 4}, "crops"),
    ({"crops": 10}, "crops"),
    ({"crops": -5}, "crops"),
    ({"crops": "five"}, "crops"),
    ({"crops": 5, "crop_scale": 0.0}, "crop_scale"),
    ({"crops": 5, "crop_scale": 0.1}, "crop_scale"),
    ({"crops": 5, "crop_scale": 1.0}, "crop_scale"),
    ({"crops": 5, "crop_scale": 1.5}, "crop_scale"),
    ({"crops": 5, "crop_size": 0.8}, "crop_size"),
])
def test_bad_tta_params_are_config_errors(params, field):
    with pytest.raises(ConfigError, match=field):
        create_stage("onnx_classifier", "tta", params)


@pytest.mark.parametrize("params", [
    {"crops": 0}, {"crops": 5}, {"crops": 5, "crop_scale": 0.3}, {"crops": 5, "crop_scale": 0.95},
])
def test_good_tta_params_validate(params):
    stage = create_stage("onnx_classifier", "tta", params)
    assert stage.params.crops == params["crops"]
    assert stage.describe()["params"]["crop_scale"] == params.get("crop_scale", 0.8)
