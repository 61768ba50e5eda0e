"""Tests for workzone.stages.dfine (kind ``dfine``) with a tiny random D-FINE built from a config and saved
to a temp folder (no hub)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from tests.stages._support import run_stage  # noqa: E402
from tests.stages._tiny_hf import save_dfine, save_vit_classifier  # noqa: E402

from workzone.errors import ModelFileError  # noqa: E402
from workzone.stages.base import StageContext  # noqa: E402
from workzone.stages.registry import create_stage  # noqa: E402
from workzone.types import Image, sigmoid  # noqa: E402

IMAGES = [Image(np.zeros((40, 50, 3), np.uint8)),
          Image(np.random.default_rng(2).integers(0, 255, (120, 90, 3), dtype=np.uint8))]
LABELS = {"traffic cone": "cone", "person": "worker", "truck": "machine"}


@pytest.fixture(scope="module")
def dfine_dir(tmp_path_factory):
    return save_dfine(tmp_path_factory.mktemp("dfine"))


def _reference(folder, images, threshold):
    """(label, score) per image straight from transformers, best first."""
    import torch
    from PIL import Image as PILImage
    from transformers import AutoImageProcessor, DFineForObjectDetection

    proc = AutoImageProcessor.from_pretrained(folder)
    model = DFineForObjectDetection.from_pretrained(folder).eval()
    with torch.no_grad():
        raw = model(**proc(images=[PILImage.fromarray(i.pixels) for i in images], return_tensors="pt"))
    res = proc.post_process_object_detection(raw, threshold=threshold, target_sizes=[(i.height, i.width) for i in images])
    return [sorted(((model.config.id2label[int(k)], float(s)) for k, s in zip(r["labels"], r["scores"])),
                   key=lambda t: -t[1]) for r in res]


def test_boxes_match_transformers_and_map_labels_to_evidence(dfine_dir):
    stage = create_stage("dfine", "dfine", {"model": str(dfine_dir), "threshold": 0.0,
                                            "classes": {"labels": LABELS, "max_boxes": 1000}})
    outs = run_stage(stage, IMAGES)
    ref = _reference(dfine_dir, IMAGES, 0.0)
    assert len(outs) == 2
    for out, expected, img in zip(outs, ref, IMAGES):
        assert len(out.evidence.boxes) == len(expected) == 20  # one box per query at threshold 0
        assert sorted(b.score for b in out.evidence.boxes) == pytest.approx(sorted(s for _, s in expected), abs=1e-5)
        assert {b.label for b in out.evidence.boxes} <= set(LABELS.values())
        for b in out.evidence.boxes:
            assert 0 <= b.x1 <= b.x2 <= img.width and 0 <= b.y1 <= b.y2 <= img.height
        assert np.isfinite(out.log_odds)


def test_a_high_threshold_reports_the_prior(dfine_dir):
    stage = create_stage("dfine", "dfine", {"model": str(dfine_dir), "threshold": 0.99,
                                            "classes": {"labels": LABELS, "prior": 0.07}})
    assert [sigmoid(o.log_odds) for o in run_stage(stage, IMAGES)] == pytest.approx([0.07, 0.07], abs=1e-6)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    folder = save_vit_classifier(tmp_path / "vit", ["none", "roadwork"])
    stage = create_stage("dfine", "dfine", {"model": str(folder)})
    with pytest.raises(ModelFileError, match="not D-FINE"):
        asyncio.run(stage.load())


def test_a_missing_local_directory_is_a_model_file_error(tmp_path):
    stage = create_stage("dfine", "dfine", {"model": "./no-such-dfine"}, context=StageContext(base_dir=tmp_path))
    with pytest.raises(ModelFileError, match="does not exist"):
        asyncio.run(stage.load())
