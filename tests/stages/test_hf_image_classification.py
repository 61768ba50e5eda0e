"""Tests for workzone.stages.hf_image_classification with a tiny random ViT saved to a temp folder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from tests.stages._tiny_hf import save_vit_classifier  # noqa: E402
from tests.stages._support import run_stage  # noqa: E402

from workzone.errors import ConfigError, ModelFileError  # noqa: E402
from workzone.stages.base import StageContext  # noqa: E402
from workzone.stages.registry import create_stage  # noqa: E402
from workzone.types import Image  # noqa: E402

IMAGES = [Image(np.zeros((40, 50, 3), np.uint8)),
          Image(np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8))]


@pytest.fixture(scope="module")
def vit3(tmp_path_factory):
    return save_vit_classifier(tmp_path_factory.mktemp("vit3"), ["none", "road_work", "Construction Zone"])


def _reference_probs(folder, images):
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    proc = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**proc(images=[i.pixels for i in images], return_tensors="pt")).logits
    return torch.softmax(logits, -1).numpy()


def test_log_odds_sum_the_positive_softmax_mass(vit3):
    # Labels match ignoring case, spaces and underscores.
    stage = create_stage("hf_image_classification", "vit",
                         {"model": str(vit3), "positive_labels": ["Road Work", "construction_zone"]})
    outs = run_stage(stage, IMAGES)
    probs = _reference_probs(vit3, IMAGES)
    assert len(outs) == 2
    for out, p in zip(outs, probs):
        expected = np.log(p[1] + p[2]) - np.log(p[0])
        assert out.log_odds == pytest.approx(expected, abs=1e-4)
        assert out.evidence.notes[0].startswith("top: ")
    assert outs[0].log_odds != pytest.approx(outs[1].log_odds, abs=1e-6)  # the image matters


def test_relative_model_dir_resolves_against_the_pipeline_folder(vit3):
    stage = create_stage("hf_image_classification", "vit", {"model": vit3.name, "positive_labels": ["road_work"],
                                                             "batch_size": 1},
                         context=StageContext(base_dir=vit3.parent))
    outs = run_stage(stage, IMAGES)
    p = _reference_probs(vit3, IMAGES)
    assert [o.log_odds for o in outs] == pytest.approx(list(np.log(p[:, 1]) - np.log(p[:, 0] + p[:, 2])), abs=1e-4)


@pytest.mark.parametrize(("labels", "match"), [
    (["roadwork", "bridge"], "are not labels"),
    (["none", "road_work", "construction zone"], "every label"),
])
def test_bad_positive_labels_are_config_errors(vit3, labels, match):
    stage = create_stage("hf_image_classification", "vit", {"model": str(vit3), "positive_labels": labels})
    with pytest.raises(ConfigError, match=match):
        asyncio.run(stage.load())


def test_missing_local_model_is_a_model_file_error(tmp_path):
    stage = create_stage("hf_image_classification", "vit", {"model": "./nope", "positive_labels": ["x"]},
                         context=StageContext(base_dir=tmp_path))
    with pytest.raises(ModelFileError, match="does not exist"):
        asyncio.run(stage.load())


def test_empty_positive_labels_rejected():
    with pytest.raises(ConfigError, match="positive_labels"):
        create_stage("hf_image_classification", "vit", {"model": "m", "positive_labels": []})
