"""Tests for workzone.stages.patch_anomaly (patch memory bank, onnxruntime + numpy) and
workzone.stages.hf_clip_anomaly (CLIP patch tokens, tiny random CLIP)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.stages._support import run_stage

from workzone.errors import ConfigError, ModelFileError
from workzone.stages.patch_anomaly import heat_map_text, nearest_distances
from workzone.stages.base import StageContext
from workzone.stages.registry import create_stage
from workzone.types import Image


def _mean_colour_extractor(path, size=64):
    """ONNX graph: (N, 3, 64, 64) -> (N, 3, 4, 4), the mean colour of each 16 x 16 patch."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("AveragePool", ["image"], ["features"], kernel_shape=[16, 16], strides=[16, 16])
    graph = helper.make_graph([node], "patch_means",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, size, size])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture()
def grey_road(tmp_path):
    """An extractor of patch mean colours and a bank that knows only grey (and dark grey) patches."""
    _mean_colour_extractor(tmp_path / "feat.onnx")
    bank = np.array([[0.5, 0.5, 0.5], [0.3, 0.3, 0.3]], np.float16)
    np.savez(tmp_path / "bank.npz", bank=bank, meta=np.array(json.dumps({"size": 64, "offset": 0.2, "scale": 0.05})))
    return tmp_path


def _stage(folder, **params):
    return create_stage("patch_anomaly", "anomaly", {"model": "feat.onnx", "bank": "bank.npz", **params},
                        context=StageContext(base_dir=folder))


def test_an_orange_patch_on_a_grey_road_is_the_anomaly_and_is_located(grey_road):
    grey = np.full((128, 128, 3), 128, np.uint8)
    cone = grey.copy()
    cone[96:128, 32:64] = (255, 110, 0)  # bottom row of the 4 x 4 grid, second column
    plain, odd = run_stage(_stage(grey_road, top_k=1, boxes=1), [Image(grey), Image(cone)])
    assert plain.log_odds < -3.0 and odd.log_odds > 3.0
    (box,) = odd.evidence.boxes
    assert box.label == "anomaly" and box.score > 0.99
    assert (box.x1, box.y1, box.x2, box.y2) == (32.0, 96.0, 64.0, 128.0)
    heat = next(n for n in odd.evidence.notes if n.startswith("anomaly heat map"))
    assert heat.endswith("0000/0000/0000/0900")
    assert any(n.startswith("anomaly: score") for n in odd.evidence.notes)


def test_offset_and_scale_from_params_override_the_bank(grey_road):
    img = [Image(np.full((64, 64, 3), 128, np.uint8))]
    (a,) = run_stage(_stage(grey_road), img)
    (b,) = run_stage(_stage(grey_road, offset=-1.0, scale=1.0), img)
    assert b.log_odds == pytest.approx(a.log_odds * 0.05 + 0.2 + 1.0, abs=1e-3)


def test_missing_or_mismatched_files_are_refused(grey_road, tmp_path_factory):
    with pytest.raises(ModelFileError, match="memory bank"):
        run_stage(_stage(grey_road, bank="nope.npz"), [])
    np.savez(grey_road / "wide.npz", bank=np.zeros((2, 5), np.float16), meta=np.array("{}"))
    from workzone.errors import StageError

    with pytest.raises(StageError, match="3 features per patch, the bank has 5"):
        run_stage(_stage(grey_road, bank="wide.npz"), [Image(np.zeros((64, 64, 3), np.uint8))], warmup=False)
    with pytest.raises(ConfigError, match="scale"):
        _stage(grey_road, scale=0)


def test_nearest_distances_and_heat_map_text():
    bank = np.array([[0.0, 0.0], [10.0, 0.0]])
    assert nearest_distances(np.array([[1.0, 0.0], [9.0, 0.0], [5.0, 12.0]]), bank).tolist() == pytest.approx([1.0, 1.0, 13.0])
    heat = np.zeros((8, 8))
    heat[7, 0] = 0.95
    assert heat_map_text(heat, 2) == "00/90"


# -- CLIP patch-token anomaly -----------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from tests.stages._tiny_hf import save_clip

    return save_clip(tmp_path_factory.mktemp("clip_anomaly") / "clip")


def test_clip_anomaly_scores_patches_against_normal_and_abnormal_prompts(clip_dir):
    stage = create_stage("hf_clip_anomaly", "clipano", {"model": str(clip_dir), "normal_prompts": ["an empty street"],
                                                        "abnormal_prompts": ["a traffic cone"], "top_k": 2, "boxes": 2,
                                                        "grid": 2})
    rng = np.random.default_rng(0)
    imgs = [Image(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)), Image(np.zeros((50, 50, 3), np.uint8))]
    outs = run_stage(stage, imgs)
    for img, out in zip(imgs, outs):
        assert np.isfinite(out.log_odds)
        assert len(out.evidence.boxes) == 2 and all(b.label == "anomaly" for b in out.evidence.boxes)
        assert all(0 <= b.x1 < b.x2 <= img.width and 0 <= b.y1 < b.y2 <= img.height for b in out.evidence.boxes)
        assert any(n.startswith("clip anomaly: global") for n in out.evidence.notes)
        heat = next(n for n in out.evidence.notes if n.startswith("anomaly heat map 2x2"))
        assert len(heat.rsplit(": ", 1)[1]) == 5  # "dd/dd"
    # Swapping the prompt roles flips every patch contrast, so the score changes sign.
    swapped = create_stage("hf_clip_anomaly", "clipano", {"model": str(clip_dir), "normal_prompts": ["a traffic cone"],
                                                          "abnormal_prompts": ["an empty street"], "top_k": 16})
    same = create_stage("hf_clip_anomaly", "clipano", {"model": str(clip_dir), "normal_prompts": ["an empty street"],
                                                       "abnormal_prompts": ["a traffic cone"], "top_k": 16})
    a, b = run_stage(same, imgs[:1])[0], run_stage(swapped, imgs[:1])[0]
    assert a.log_odds == pytest.approx(-b.log_odds, abs=1e-4)


def test_clip_anomaly_prompts_must_differ():
    with pytest.raises(ConfigError, match="both normal and abnormal"):
        create_stage("hf_clip_anomaly", "c", {"normal_prompts": ["x"], "abnormal_prompts": ["x"]})
