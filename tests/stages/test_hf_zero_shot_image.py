"""Tests for workzone.stages.hf_zero_shot_image with a tiny random CLIP saved to a temp folder."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from tests.stages._tiny_hf import save_clip  # noqa: E402
from tests.stages._support import run_stage  # noqa: E402

from workzone.errors import ConfigError  # noqa: E402
from workzone.stages.registry import create_stage  # noqa: E402
from workzone.stages.hf_zero_shot_image import contrast_log_odds  # noqa: E402
from workzone.types import Image  # noqa: E402

POS = ["a photo of road work", "a traffic cone"]
NEG = ["an empty street"]
IMAGES = [Image(np.zeros((40, 50, 3), np.uint8)),
          Image(np.random.default_rng(1).integers(0, 255, (50, 40, 3), dtype=np.uint8))]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_clip(tmp_path_factory.mktemp("clip"))


def _reference_logits(folder, images):
    import torch
    from transformers import AutoModel, AutoProcessor

    proc = AutoProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        inputs = proc(text=POS + NEG, images=[i.pixels for i in images], return_tensors="pt", padding=True)
        return model(**inputs).logits_per_image.numpy().astype(np.float64)


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_log_odds_contrast_positive_and_negative_prompts(clip_dir, temperature):
    stage = create_stage("hf_zero_shot_image", "clip", {"model": str(clip_dir), "positive_prompts": POS,
                                                        "negative_prompts": NEG, "temperature": temperature})
    outs = run_stage(stage, IMAGES)
    ref = _reference_logits(clip_dir, IMAGES) / temperature
    for out, row in zip(outs, ref):
        expected = np.log(np.exp(row[:2]).sum()) - row[2]
        assert out.log_odds == pytest.approx(expected, abs=1e-4)
        assert "best prompt" in out.evidence.notes[0]


def test_swapping_prompts_flips_the_sign(clip_dir):
    a = run_stage(create_stage("hf_zero_shot_image", "c", {"model": str(clip_dir), "positive_prompts": [POS[0]],
                                                      "negative_prompts": NEG}), IMAGES[:1])[0]
    b = run_stage(create_stage("hf_zero_shot_image", "c", {"model": str(clip_dir), "positive_prompts": NEG,
                                                      "negative_prompts": [POS[0]]}), IMAGES[:1])[0]
    assert a.log_odds == pytest.approx(-b.log_odds, abs=1e-5)
    assert a.log_odds != 0


@pytest.mark.parametrize(("pos", "neg", "expected"), [
    ([2.0], [1.0], 1.0),
    ([0.0, 0.0], [0.0], float(np.log(2))),
    ([1000.0], [-1000.0], 40.0),  # clamped, never inf
])
def test_contrast_log_odds(pos, neg, expected):
    assert contrast_log_odds(np.array(pos), np.array(neg)) == pytest.approx(expected)


def test_overlapping_prompts_rejected():
    with pytest.raises(ConfigError, match="both positive and negative"):
        create_stage("hf_zero_shot_image", "c", {"model": "m", "positive_prompts": ["x"], "negative_prompts": ["x"]})
