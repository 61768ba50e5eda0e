"""Tests for workzone.stages.rfdetr.

The model test builds a random-initialised RF-DETR Nano (``model: null``; nothing is downloaded)
and needs ``rfdetr`` with a working torchvision; it is skipped where they cannot run. The
conversion of rfdetr's output arrays and the path checks run everywhere.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from tests.stages._support import why_cannot_run

from workzone.errors import ConfigError, MissingExtraError, ModelFileError
from workzone.stages.base import StageContext
from workzone.stages.registry import create_stage
from workzone.stages.rfdetr import to_detections
from workzone.types import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


_WHY = why_cannot_run("rfdetr", "torchvision", "rfdetr")


@pytest.mark.parametrize(("class_name", "names", "expected"), [
    (None, ["cone", "worker"], ["worker", "cone", "class_7"]),
    (np.array(["traffic cone", "", "drum"]), ["x", "y"], ["traffic cone", "class_0", "drum"]),
])
def test_to_detections_labels(class_name, names, expected):
    xyxy = np.array([[0, 0, 4, 4], [1, 2, 3, 5], [5, 5, 9, 9]], np.float32)
    dets = to_detections(xyxy, np.array([0.9, 0.5, 1.2]), np.array([1, 0, 7]), names, class_name)
    assert [d.label for d in dets] == expected
    assert [d.score for d in dets] == pytest.approx([0.9, 0.5, 1.0])  # clipped into [0, 1]
    assert (dets[1].x1, dets[1].y1, dets[1].x2, dets[1].y2) == (1, 2, 3, 5)


def test_to_detections_empty_and_without_confidence():
    assert to_detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0), []) == []
    (d,) = to_detections(np.array([[0, 0, 1, 1]]), None, None, [])
    assert d.score == 1.0 and d.label == "class_-1"


def test_missing_checkpoint_is_refused_without_download(tmp_path):
    stage = create_stage("rfdetr", "rf", {"model": "rf-detr-base.pth"}, context=StageContext(base_dir=tmp_path))
    with pytest.raises(ModelFileError, match="allow_download"):
        asyncio.run(stage.load())


def test_model_key_is_required_and_variant_checked():
    with pytest.raises(ConfigError, match="model"):
        create_stage("rfdetr", "rf", {})
    with pytest.raises(ConfigError, match="variant"):
        create_stage("rfdetr", "rf", {"model": None, "variant": "huge"})


@pytest.mark.skipif(_WHY is None, reason="rfdetr works here")
def test_unusable_rfdetr_names_the_extra():
    with pytest.raises(MissingExtraError, match=r"workzone\[rfdetr\]"):
        asyncio.run(create_stage("rfdetr", "rf", {"model": None}).load())


@pytest.mark.skipif(_WHY is not None, reason=_WHY or "")
def test_random_nano_runs_end_to_end():
    import torch
    from rfdetr.assets.coco_classes import COCO_CLASSES

    torch.manual_seed(0)
    # Every COCO name counts as a light, except trucks (machine): labels must come from rfdetr's names.
    labels = {name: "light" for name in COCO_CLASSES.values()} | {"truck": "machine"}
    stage = create_stage("rfdetr", "rf", {"model": None, "variant": "nano", "threshold": 0.0,
                                          "classes": {"builtin_aliases": False, "max_boxes": 1000, "labels": labels}})
    images = [Image(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)),
              Image(np.zeros((64, 96, 3), np.uint8))]

    async def go():
        await stage.load()
        try:
            return await stage.predict(images)
        finally:
            await stage.aclose()

    outs = asyncio.run(go())
    assert len(outs) == 2
    for out, img in zip(outs, images):
        assert np.isfinite(out.log_odds)
        assert {b.label for b in out.evidence.boxes} <= {"light", "machine"}
        for b in out.evidence.boxes:
            assert 0 <= b.x1 <= b.x2 <= img.width + 1e-3 and 0 <= b.y1 <= b.y2 <= img.height + 1e-3
        # threshold 0 keeps all 300 queries: those with a COCO name are evidence; the only ones
        # ignored are ids that rfdetr itself leaves unnamed (the gaps in COCO's 91 ids).
        assert 150 <= len(out.evidence.boxes) <= 300
        ignored = [n for n in out.evidence.notes if n.startswith("ignored ")]
        for item in (ignored[0].removeprefix("ignored boxes labelled ").split(", ") if ignored else []):
            label = item.rsplit(" (x", 1)[0].strip("'")
            assert label.startswith("class_") and int(label.removeprefix("class_")) not in COCO_CLASSES
