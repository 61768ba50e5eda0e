"""Tests for workzone.stages.hf_zero_shot_detection with a tiny random OWLv2 saved to a temp folder."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from tests.stages._tiny_hf import save_owlv2  # noqa: E402
from tests.stages._support import run_stage  # noqa: E402

from workzone.errors import ConfigError  # noqa: E402
from workzone.stages.hf_zero_shot_detection import match_phrase  # noqa: E402
from workzone.stages.registry import create_stage  # noqa: E402
from workzone.types import Image, sigmoid  # noqa: E402

PROMPTS = {"a traffic cone": "cone", "a worker": "worker", "a road work sign": "sign"}
IMAGES = [Image(np.zeros((40, 50, 3), np.uint8)),
          Image(np.random.default_rng(2).integers(0, 255, (60, 30, 3), dtype=np.uint8))]


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory):
    return save_owlv2(tmp_path_factory.mktemp("owl"))


def _reference(folder, images, threshold):
    """Boxes straight from transformers: (evidence class, score) per image, best first."""
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    proc = AutoProcessor.from_pretrained(folder)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
    queries = list(PROMPTS)
    with torch.no_grad():
        inputs = proc(text=[queries] * len(images), images=[i.pixels for i in images], return_tensors="pt",
                      padding="max_length", truncation=True)
        res = proc.post_process_grounded_object_detection(
            model(**inputs), threshold=threshold, target_sizes=[(i.height, i.width) for i in images])
    return [sorted(((PROMPTS[queries[int(k)]], float(s)) for k, s in zip(r["labels"], r["scores"])),
                   key=lambda t: -t[1]) for r in res]


def test_boxes_match_transformers_and_map_prompts_to_evidence(owl_dir):
    stage = create_stage("hf_zero_shot_detection", "owl", {"model": str(owl_dir), "prompts": PROMPTS,
                                                           "threshold": 0.5, "classes": {"max_boxes": 1000}})
    outs = run_stage(stage, IMAGES)
    ref = _reference(owl_dir, IMAGES, 0.5)
    assert len(outs) == 2
    for out, expected, img in zip(outs, ref, IMAGES):
        got = [(b.label, b.score) for b in out.evidence.boxes]
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert [g[1] for g in got] == pytest.approx([e[1] for e in expected], abs=1e-5)
        for b in out.evidence.boxes:
            assert 0 <= b.x1 <= b.x2 <= img.width and 0 <= b.y1 <= b.y2 <= img.height
    assert any(out.evidence.boxes for out in outs), "the tiny model should fire at 0.5 on some query"


def test_nothing_above_threshold_gives_the_prior(owl_dir):
    stage = create_stage("hf_zero_shot_detection", "owl", {"model": str(owl_dir), "prompts": PROMPTS,
                                                           "threshold": 1.0, "classes": {"prior": 0.05}})
    (out,) = run_stage(stage, IMAGES[:1])
    assert sigmoid(out.log_odds) == pytest.approx(0.05, abs=1e-6)


def test_prompts_must_name_known_evidence():
    with pytest.raises(ConfigError, match="unknown evidence classes"):
        create_stage("hf_zero_shot_detection", "owl", {"model": "m", "prompts": {"a unicorn": "unicorn"}})
    stage = create_stage("hf_zero_shot_detection", "owl", {"model": "m", "prompts": {"a car": "vehicle"},
                                                           "classes": {"weights": {"vehicle": 0.1}}})
    assert stage.params.prompts == {"a car": "vehicle"}


@pytest.mark.parametrize(("phrase", "expected"), [
    ("traffic cone", "a traffic cone"),
    ("cone worker", "a traffic cone"),        # ties go to the first prompt
    ("road work sign.", "a road work sign"),
    ("a", None),                               # stop words alone match nothing
    ("bicycle", None),
])
def test_match_phrase(phrase, expected):
    assert match_phrase(phrase, list(PROMPTS)) == expected
