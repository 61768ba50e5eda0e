"""temporal_consistency: a forward HMM filter per video over earlier stages' scores."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from workzone.cascade import Cascade
from workzone.config.loader import parse_pipeline
from workzone.errors import ConfigError
from workzone.stages.registry import create_stage
from workzone.types import Evidence, FrameRef, Image, StageReport, logit

PX = np.zeros((16, 16, 3), np.uint8)


def _frames(video: str, n: int, start: int = 0) -> list[Image]:
    return [Image(PX, source=f"{video}#frame={k}", frame=FrameRef(video, k)) for k in range(start, start + n)]


def _reports(probs, stage="cls") -> list[tuple[StageReport, ...]]:
    return [(StageReport(stage, "x", 0, logit(p), Evidence(), 1.0),) for p in probs]


def _run(stage, images, probs, stage_name="cls"):
    outs = asyncio.run(stage.predict(images, evidence=_reports(probs, stage_name)))
    return [None if o.log_odds is None else 1 / (1 + np.exp(-o.log_odds)) for o in outs]


def test_a_lone_spike_is_damped_and_a_dip_in_a_zone_is_held() -> None:
    stage = create_stage("temporal_consistency", "t")
    probs = [0.1] * 10 + [0.9] + [0.1] * 5 + [0.95] * 8 + [0.2] + [0.95] * 4
    out = _run(stage, _frames("a.mp4", len(probs)), probs)
    assert out[10] < 0.5 < probs[10]   # the spike alone does not flip the filtered state
    assert out[24] > 0.5 > probs[24]   # the dip inside the zone does not either
    assert out[5] < 0.1 and out[20] > 0.9


def test_videos_are_tracked_apart_and_a_restart_resets() -> None:
    stage = create_stage("temporal_consistency", "t", {"switch_probability": 0.05})
    _run(stage, _frames("zone.mp4", 10), [0.95] * 10)
    calm = _run(stage, _frames("calm.mp4", 1), [0.5])
    assert calm[0] == pytest.approx(0.5)  # nothing carried over from the other video
    again = _run(stage, _frames("zone.mp4", 1, start=0), [0.5])
    assert again[0] == pytest.approx(0.5)  # frame index went back: a new pass over the video
    more = _run(stage, _frames("zone.mp4", 1, start=1), [0.5])
    assert more[0] == pytest.approx(0.5)


def test_source_stage_selects_the_followed_score_and_stills_abstain() -> None:
    stage = create_stage("temporal_consistency", "t", {"source_stage": "other"})
    assert _run(stage, _frames("a.mp4", 3), [0.99] * 3, stage_name="cls") == pytest.approx([0.5] * 3)
    out = asyncio.run(stage.predict([Image(PX, source="photo.jpg")], evidence=_reports([0.9])))
    assert out[0].log_odds is None and "not a video frame" in out[0].evidence.notes[0]


@pytest.mark.parametrize(("params", "key"), [({"switch_probability": 0.7}, "switch_probability"),
                                             ({"prior": 1.0}, "prior"), ({"window": 3}, "window")])
def test_bad_params_name_the_key(params, key) -> None:
    with pytest.raises(ConfigError, match=key):
        create_stage("temporal_consistency", "t", params)


def test_in_a_cascade_it_follows_the_earlier_tier(tmp_path, tiny_model) -> None:
    config = parse_pipeline(f"""
name: video
tiers:
  - name: frame
    stages: [{{name: cls, kind: onnx_classifier, model: {tiny_model}}}]
  - name: sequence
    stages: [{{name: smooth, kind: temporal_consistency, switch_probability: 0.02}}]
    fusion: {{bias: 0.0, weights: {{smooth: 1.0}}, fitted: true}}
""", "video.yaml")
    red, blue = np.full((32, 32, 3), (220, 30, 30), np.uint8), np.full((32, 32, 3), (30, 30, 220), np.uint8)
    pixels = [red] * 8 + [blue] + [red] * 3
    images = [Image(px, source=f"v.mp4#frame={k}", frame=FrameRef("v.mp4", k)) for k, px in enumerate(pixels)]

    async def go():
        async with Cascade.from_config(config, base_dir=tmp_path) as cascade:
            return await cascade.run(images)

    decisions = asyncio.run(go())
    smooth = [next(s for s in d.stages if s.stage == "smooth") for d in decisions]
    assert all(s.error is None for s in smooth)
    assert all(d.label for d in decisions)  # the blue frame inside a red run stays road work
    assert decisions[8].stages[0].probability < 0.5  # although the classifier alone says no
