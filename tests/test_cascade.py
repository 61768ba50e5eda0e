import asyncio
import math

import numpy as np
import pytest

import tests.stages_fixtures  # noqa: F401 - registers the test stage kinds
from tests.conftest import solid
from workzone.cascade import Cascade
from workzone.config.loader import parse_pipeline
from workzone.io.images import decode_image

RED, GREY, BLUE, PINK = (solid(c) for c in [(250, 0, 0), (128, 128, 128), (0, 0, 250), (150, 100, 120)])


def cascade(text: str) -> Cascade:
    return Cascade.from_config(parse_pipeline(text))


TWO_TIERS = """
name: t
tiers:
  - name: first
    stages: [{name: a, kind: test_redness, cost: 5}]
    exit: {lower: 0.1, upper: 0.9}
  - name: second
    stages: [{name: b, kind: test_redness, gain: 40, cost: 50}]
    fusion: {weights: {b: 1.0}, fitted: true}
"""


def run(c: Cascade, arrays, **kw):
    return asyncio.run(c.run([decode_image(a) for a in arrays], **kw))


def test_confident_images_exit_early_and_only_the_rest_move_on():
    c = cascade(TWO_TIERS)
    d = run(c, [RED, GREY, BLUE, PINK])
    assert [x.exit_tier for x in d] == [0, 1, 0, 1]
    assert d[0].label and not d[2].label
    assert c.tiers[1][1][0].calls == 2  # stage b saw only the two undecided images
    assert d[0].cost == 5 and d[1].cost == 55
    assert len(d[1].tier_probabilities) == 2 and d[1].reason == "last tier"
    assert d[3].probability > 0.5  # pinkish: redder than blue, amplified by tier 2
    assert all(math.isfinite(x.probability) and 0 <= x.probability <= 1 for x in d)


def test_run_all_sends_every_image_through_every_tier():
    c = cascade(TWO_TIERS)
    d = run(c, [RED, BLUE], run_all=True)
    assert [x.exit_tier for x in d] == [1, 1]
    assert [len(x.stages) for x in d] == [2, 2]


def test_failing_stage_is_recorded_and_image_still_decided():
    c = cascade("""
tiers:
  - name: only
    stages:
      - {name: good, kind: test_redness}
      - {name: bad, kind: test_failing, message: kaput}
""")
    d = run(c, [RED, BLUE])
    assert d[0].errors == {"bad": "RuntimeError: kaput"}
    assert d[0].label and not d[1].label
    assert [s.stage for s in d[0].stages] == ["good", "bad"]


def test_stage_timeout_is_isolated():
    c = cascade("""
tiers:
  - name: only
    stages:
      - {name: good, kind: test_redness}
      - {name: slow, kind: test_sleepy, seconds: 5, timeout_s: 0.05}
""")
    d = run(c, [BLUE])
    assert "no answer within" in d[0].errors["slow"]
    assert d[0].probability < 0.5  # decided from the stage that answered


def test_deadline_decides_from_finished_tiers():
    c = cascade("""
tiers:
  - name: quick
    stages: [{name: a, kind: test_redness}]
    exit: {lower: 0.0, upper: 1.0}
  - name: glacial
    stages: [{name: z, kind: test_sleepy, seconds: 10}]
""")
    d = run(c, [RED, BLUE], deadline_s=0.2)
    assert d[0].latency_ms < 2000
    assert d[0].label and not d[1].label
    assert d[0].errors["z"].startswith("stage 'z': no answer within")


def test_deadline_before_any_tier_gives_the_prior():
    c = cascade("""
tiers:
  - name: glacial
    stages: [{name: z, kind: test_sleepy, seconds: 10}]
    fusion: {bias: -2.0, weights: {z: 1.0}, fitted: true}
""")
    d = run(c, [RED], deadline_s=0.05)
    assert d[0].probability == pytest.approx(1 / (1 + math.exp(2.0)))


def test_events_arrive_per_tier_in_order():
    c = cascade(TWO_TIERS)
    events = []
    run(c, [GREY], on_event=events.append)
    assert [(e.tier, e.decided) for e in events] == [(0, False), (1, True)]
    assert events[1].stages == ("a", "b") and events[1].cost == 55


def test_async_event_callbacks_are_awaited():
    c = cascade(TWO_TIERS)
    seen = []

    async def cb(ev):
        await asyncio.sleep(0)
        seen.append(ev.tier)

    run(c, [GREY], on_event=cb)
    assert seen == [0, 1]


def test_disabled_stage_is_not_built():
    c = cascade(TWO_TIERS.replace("cost: 50", "cost: 50, enabled: false"))
    assert [s.name for s in c.stages] == ["a"]
    d = run(c, [GREY])
    assert d[0].exit_tier == 1 and len(d[0].stages) == 1


def test_onnx_classifier_stage_in_a_cascade(tiny_model):
    c = cascade(f"""
tiers:
  - name: whole
    stages: [{{name: cls, kind: onnx_classifier, model: {tiny_model}}}]
    exit: {{lower: 0.2, upper: 0.8}}
  - name: tiles
    stages: [{{name: tiles, kind: onnx_classifier, model: {tiny_model}, tiles: 2, flip: true, include_full: true}}]
""")
    img = np.zeros((64, 64, 3), np.uint8)
    img[:20, :20, 0] = 255  # a small red patch: weak in the whole frame, strong in one tile
    d = run(c, [RED, BLUE, img])
    assert d[0].label and d[0].exit_tier == 0
    assert not d[1].label and d[1].exit_tier == 0
    tiles = d[2].stages[-1]
    assert tiles.stage == "tiles" and tiles.evidence.boxes[0].x1 == 0 and tiles.evidence.boxes[0].y1 == 0
    assert tiles.log_odds > d[2].stages[0].log_odds


def test_evidence_stages_receive_earlier_reports():
    c = cascade("""
tiers:
  - name: first
    stages: [{name: a, kind: test_redness}, {name: b, kind: test_redness}]
  - name: judge
    stages: [{name: j, kind: test_evidence_counter}]
""")
    d = run(c, [RED, BLUE], run_all=True)
    judge = d[0].stages[-1]
    assert judge.stage == "j" and judge.evidence.notes == ("a,b",)
    assert judge.log_odds == 2.0 and d[1].stages[-1].log_odds == 0.0
