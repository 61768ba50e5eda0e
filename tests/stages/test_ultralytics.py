"""Tests for workzone.stages.ultralytics (kind ``ultralytics``).

The model tests build a random-initialised YOLO11n from Ultralytics' packaged yaml (nothing is
downloaded) and need a working torchvision next to torch: Ultralytics imports it to predict. Where
torchvision is missing or broken they are skipped, and the tests that need no model still run.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.stages._support import run_stage, ultralytics_offline

from workzone.errors import MissingExtraError, ModelFileError
from workzone.stages.base import StageContext
from workzone.stages.registry import create_stage
from workzone.types import Image, sigmoid


# No network calls, and no settings file in the user's home.
_WHY = ultralytics_offline()
needs_ultralytics = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")
IMAGES = [Image(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)),
          Image(np.full((90, 60, 3), (200, 40, 10), np.uint8))]
ALL_CONES = {"builtin_aliases": False, "labels": {str(i): "cone" for i in range(80)}, "max_boxes": 1000}


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory):
    if _WHY:
        pytest.skip(_WHY)
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("yolo") / "tiny.pt"
    YOLO("yolo11n.yaml").save(str(path))
    return path


@needs_ultralytics
def test_boxes_match_ultralytics_on_rgb_input(tiny_pt):
    from PIL import Image as PILImage
    from ultralytics import YOLO

    stage = create_stage("ultralytics", "yolo", {"model": tiny_pt.name, "conf": 0.0, "imgsz": 64,
                                                 "classes": ALL_CONES},
                         context=StageContext(base_dir=tiny_pt.parent))
    outs = run_stage(stage, IMAGES)
    ref_model = YOLO(str(tiny_pt))
    for out, img in zip(outs, IMAGES):
        # A PIL image is read as RGB by Ultralytics: equal boxes mean the stage's BGR hand-over is right.
        ref = ref_model.predict(PILImage.fromarray(img.pixels), conf=0.0, imgsz=64, verbose=False)[0]
        assert len(out.evidence.boxes) == len(ref.boxes) > 0
        assert sorted(b.score for b in out.evidence.boxes) == pytest.approx(sorted(ref.boxes.conf.tolist()), abs=1e-6)
        for b in out.evidence.boxes:
            assert b.label == "cone" and 0 <= b.x1 <= b.x2 <= img.width and 0 <= b.y1 <= b.y2 <= img.height


@needs_ultralytics
def test_high_conf_on_a_random_model_reports_the_prior(tiny_pt):
    stage = create_stage("ultralytics", "yolo", {"model": str(tiny_pt), "conf": 0.9, "imgsz": 64,
                                                 "classes": {**ALL_CONES, "prior": 0.07}})
    outs = run_stage(stage, IMAGES)
    assert [sigmoid(o.log_odds) for o in outs] == pytest.approx([0.07, 0.07], abs=1e-6)


@needs_ultralytics
def test_packaged_yaml_builds_without_download():
    stage = create_stage("ultralytics", "yolo", {"model": "yolo11n.yaml", "conf": 0.0, "imgsz": 64, "max_det": 5})
    outs = run_stage(stage, IMAGES[:1])
    assert len(outs) == 1 and np.isfinite(outs[0].log_odds)


def test_hub_name_not_on_disk_is_refused_without_download(tmp_path):
    stage = create_stage("ultralytics", "yolo", {"model": "yolo11n.pt"}, context=StageContext(base_dir=tmp_path))
    with pytest.raises(ModelFileError, match="allow_download"):
        asyncio.run(stage.load())


@pytest.mark.skipif(_WHY is None, reason="ultralytics works here")
def test_unusable_ultralytics_names_the_extra(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"not a model")
    stage = create_stage("ultralytics", "yolo", {"model": "m.pt"}, context=StageContext(base_dir=tmp_path))
    with pytest.raises(MissingExtraError, match=r"workzone\[detect\]"):
        asyncio.run(stage.load())
