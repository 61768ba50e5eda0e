"""Tests for workzone.stages.yolo_world (kind ``yolo_world``).

The models are random-initialised YOLOv8s-worldv2 networks built from Ultralytics' packaged yaml
(nothing is downloaded). A "vocabulary file" is made the way ``set_classes`` + ``save`` makes one,
with random text embeddings standing in for CLIP's (no CLIP model is loaded here).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.stages._support import run_stage, ultralytics_offline
from workzone.errors import ConfigError, ModelFileError
from workzone.stages.base import StageContext
from workzone.stages.registry import create_stage
from workzone.types import Image, sigmoid

# No network calls, and no settings file in the user's home.
_WHY = ultralytics_offline()
needs_ultralytics = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")
IMAGES = [Image(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)),
          Image(np.full((90, 60, 3), (200, 40, 10), np.uint8))]
PROMPTS = {"a traffic cone": "cone", "a construction barrel": "drum", "a road worker": "worker"}


@pytest.fixture(scope="module")
def vocab_pt(tmp_path_factory):
    """YOLO-World weights whose saved vocabulary is PROMPTS (as after set_classes(list(PROMPTS)) and save)."""
    if _WHY:
        pytest.skip(_WHY)
    import torch
    from ultralytics import YOLOWorld

    torch.manual_seed(0)
    model = YOLOWorld("yolov8s-worldv2.yaml")
    model.model.txt_feats = torch.randn(1, len(PROMPTS), 512)  # what set_classes stores: one embedding per prompt
    model.model.model[-1].nc = len(PROMPTS)
    model.model.names = list(PROMPTS)
    path = tmp_path_factory.mktemp("world") / "vocab.pt"
    model.save(str(path))
    return path


@needs_ultralytics
def test_a_saved_vocabulary_equal_to_the_prompts_loads_without_clip_and_maps_boxes(vocab_pt):
    stage = create_stage("yolo_world", "world", {"model": vocab_pt.name, "prompts": PROMPTS, "conf": 0.0, "imgsz": 64,
                                                 "classes": {"max_boxes": 1000}},
                         context=StageContext(base_dir=vocab_pt.parent))
    outs = run_stage(stage, IMAGES)
    assert len(outs) == 2 and any(o.evidence.boxes for o in outs)
    for out, img in zip(outs, IMAGES):
        assert {b.label for b in out.evidence.boxes} <= set(PROMPTS.values())
        for b in out.evidence.boxes:
            assert 0 <= b.x1 <= b.x2 <= img.width and 0 <= b.y1 <= b.y2 <= img.height
        assert np.isfinite(out.log_odds)


@needs_ultralytics
def test_boxes_match_ultralytics(vocab_pt):
    from PIL import Image as PILImage
    from ultralytics import YOLOWorld

    stage = create_stage("yolo_world", "world", {"model": str(vocab_pt), "prompts": PROMPTS, "conf": 0.0, "imgsz": 64,
                                                 "classes": {"max_boxes": 1000}})
    outs = run_stage(stage, IMAGES)
    ref = YOLOWorld(str(vocab_pt))
    for out, img in zip(outs, IMAGES):
        r = ref.predict(PILImage.fromarray(img.pixels), conf=0.0, imgsz=64, verbose=False)[0]
        assert sorted(b.score for b in out.evidence.boxes) == pytest.approx(sorted(r.boxes.conf.tolist()), abs=1e-6)


@needs_ultralytics
def test_without_prompts_the_saved_names_map_through_classes():
    # The packaged yaml builds a random network with the 80 COCO names: person counts as a worker here.
    stage = create_stage("yolo_world", "world", {"model": "yolov8s-worldv2.yaml", "conf": 0.0, "imgsz": 64,
                                                 "classes": {"builtin_aliases": False, "labels": {"person": "worker"},
                                                             "max_boxes": 1000, "prior": 0.07}})
    outs = run_stage(stage, IMAGES)
    assert all(b.label == "worker" for o in outs for b in o.evidence.boxes)
    high = create_stage("yolo_world", "world", {"model": "yolov8s-worldv2.yaml", "conf": 0.99, "imgsz": 64,
                                                "classes": {"prior": 0.07}})
    assert [sigmoid(o.log_odds) for o in run_stage(high, IMAGES)] == pytest.approx([0.07, 0.07], abs=1e-6)


def test_prompts_must_name_known_evidence_classes():
    with pytest.raises(ConfigError, match="unknown evidence classes"):
        create_stage("yolo_world", "world", {"model": "w.pt", "prompts": {"a cone": "kone"}})


def test_hub_weights_not_on_disk_are_refused_without_download(tmp_path):
    stage = create_stage("yolo_world", "world", {"model": "yolov8s-worldv2.pt"}, context=StageContext(base_dir=tmp_path))
    with pytest.raises(ModelFileError, match="allow_download"):
        asyncio.run(stage.load())
