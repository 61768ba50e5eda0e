"""reasoner_openai: evidence prompt, robust parsing, resilience, and use after a real cascade tier."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from tests.conftest import build_tiny_classifier
from tests.fakes.openai_server import FakeOpenAIServer, Reply
from workzone.cascade import Cascade
from workzone.config.loader import parse_pipeline
from workzone.errors import BackendUnavailable
from workzone.stages._remote import BreakerState
from workzone.stages.reasoner_openai import ReasonerStage, build_evidence_prompt, parse_probability
from workzone.stages.registry import create_stage
from workzone.types import Box, Evidence, Image, StageReport, TextRead, sigmoid


def img(rgb=(200, 60, 40)) -> Image:
    return Image(np.full((40, 60, 3), rgb, np.uint8))


def reports() -> tuple[StageReport, ...]:
    det = Evidence(boxes=(Box("traffic cone", 0.91, 10, 20, 30, 60), Box("barrier", 0.4, 0, 0, 5, 5)),
                   texts=(TextRead("ROAD WORK AHEAD", 0.88, matched="road work"),))
    return (StageReport("det", "ultralytics", 0, 1.2, det, 12.0),
            StageReport("vlm", "vlm_openai", 1, None, Evidence(), 30.0, error="BackendUnavailable: down"))


def make(url: str, **kw) -> ReasonerStage:
    params = {"base_url": url, "model": "fake-llm", "retries": 0, "request_timeout_s": 5}
    params.update(kw)
    return create_stage("reasoner_openai", "judge", params)


async def _predict(stage, batch, prior):
    await stage.load()
    try:
        return await stage.predict(batch, evidence=prior)
    finally:
        await stage.aclose()


@pytest.fixture
def server():
    with FakeOpenAIServer(Reply(text='{"probability": 0.8, "reason": "cone and sign"}'), models=("fake-llm",)) as s:
        yield s


def test_prompt_lists_detections_text_scores_and_failures():
    text = build_evidence_prompt(reports(), (60, 40), max_boxes=1)
    assert "Image size: 60 x 40 pixels." in text
    assert f'stage "det" (ultralytics): P(road work) = {sigmoid(1.2):.3f}' in text
    assert "traffic cone 0.91 at [10, 20, 30, 60] (+1 more)" in text and "barrier" not in text
    assert '"ROAD WORK AHEAD" 0.88 (matches "road work")' in text
    assert 'stage "vlm" (vlm_openai): failed (BackendUnavailable: down); ignore it' in text


@pytest.mark.parametrize("answer, expected", [
    ('{"probability": 0.8, "reason": "cones"}', (0.8, "cones")),
    ('<think>{"probability": 0.1} hmm, no, more cones</think>\n{"probability": 0.9, "reason": "x"}', (0.9, "x")),
    ('Okay, reasoning...</think>{"probability": "65%", "reason": "sign"}', (0.65, "sign")),
    ('```json\n{"reason": "nothing", "probability": 3}\n```', (0.03, "nothing")),
    ("Probability: 0.25 because no cones", (0.25, "")),
    ('{"probability": 1.7}', None),
    ('{"probability": true}', None),
    ("I cannot tell.", None),
    ('{"probability": 0.5', (0.5, "")),  # cut off by max_tokens: the regex still reads it
])
def test_parse_probability(answer, expected):
    assert parse_probability(answer) == expected


def test_predict_sends_evidence_and_maps_probability(server):
    out = asyncio.run(_predict(make(server.url, json_mode=True), [img()], [reports()]))
    assert sigmoid(out[0].log_odds) == pytest.approx(0.8)
    assert "P(road work)=0.800: cone and sign" in out[0].evidence.notes[0]
    body = server.requests[0]
    assert body["response_format"] == {"type": "json_object"} and body["max_tokens"] == 1024
    user = body["messages"][1]["content"]
    assert "traffic cone 0.91" in user and '"probability"' in user
    assert "image_url" not in json.dumps(body)  # a text model: no pixels are sent


def test_no_evidence_means_abstain_without_a_request(server):
    out = asyncio.run(_predict(make(server.url), [img(), img()], None))
    assert [o.log_odds for o in out] == [None, None] and "no earlier evidence" in out[0].evidence.notes[0]
    out = asyncio.run(_predict(make(server.url), [img(), img()], [reports(), ()]))
    assert out[0].log_odds is not None and out[1].log_odds is None
    assert len(server.requests) == 1


def test_unparseable_answer_abstains(server):
    server.set_reply(Reply(text="It depends."))
    out = asyncio.run(_predict(make(server.url), [img()], [reports()]))
    assert out[0].log_odds is None and "gave no probability" in out[0].evidence.notes[0]


def test_extreme_probability_is_clipped(server):
    server.set_reply(Reply(text='{"probability": 1.0}'))
    out = asyncio.run(_predict(make(server.url, max_log_odds=4.0), [img()], [reports()]))
    assert out[0].log_odds == 4.0


def test_breaker_opens_on_repeated_failures(server):
    server.set_reply(Reply(status=502))
    stage = make(server.url, breaker_failures=2, breaker_cooldown_s=60)

    async def go():
        await stage.load()
        for _ in range(2):
            with pytest.raises(BackendUnavailable, match="HTTP 502"):
                await stage.predict([img()], evidence=[reports()])
        with pytest.raises(BackendUnavailable, match="circuit breaker open"):
            await stage.predict([img()], evidence=[reports()])
        assert stage.breaker.state is BreakerState.OPEN
        assert stage.describe()["breaker"]["failures"] == 2
        await stage.aclose()

    asyncio.run(go())
    assert len(server.requests) == 2


PIPELINE = """
name: reasoner-test
tiers:
  - name: fast
    stages:
      - {{name: clf, kind: onnx_classifier, model: {model}, threads: 1}}
    fusion: {{weights: {{clf: 1.0}}}}
    exit: {{lower: 0.02, upper: 0.98}}
  - name: judge
    stages:
      - {{name: judge, kind: reasoner_openai, base_url: "{url}", model: fake-llm, retries: 0}}
    fusion: {{weights: {{clf: 0.5, judge: 1.0}}}}
"""


def test_reasoner_reads_reports_of_a_real_tier(server, tmp_path):
    """Tier 1 runs for real; its reports (what the cascade would pass as prior) feed the reasoner."""
    model = build_tiny_classifier(tmp_path / "tiny.onnx", weights=(2.0, 0.0, -2.0))
    first = parse_pipeline(PIPELINE.format(model=model, url=server.url).split("  - name: judge")[0])
    images = [img((200, 60, 40)), img((90, 90, 90))]

    async def go():
        async with Cascade.from_config(first, base_dir=tmp_path) as cascade:
            decisions = await cascade.run(images)
        return await _predict(make(server.url), images, [d.stages for d in decisions])

    out = asyncio.run(go())
    assert all(o.log_odds == pytest.approx(math.log(4)) for o in out)
    prompts = [b["messages"][1]["content"] for b in server.requests]
    assert all('stage "clf" (onnx_classifier): P(road work) = ' in p for p in prompts)
    assert prompts[0] != prompts[1]  # each image gets its own evidence


def test_cascade_passes_prior_to_the_reasoner(server, tmp_path):
    model = build_tiny_classifier(tmp_path / "tiny.onnx", weights=(2.0, 0.0, -2.0))
    cfg = parse_pipeline(PIPELINE.format(model=model, url=server.url))

    async def go():
        async with Cascade.from_config(cfg, base_dir=tmp_path) as cascade:
            return await cascade.run([img((90, 90, 90))])

    d = asyncio.run(go())[0]
    assert [r.stage for r in d.stages] == ["clf", "judge"]
    assert d.stages[1].log_odds == pytest.approx(math.log(4))
    assert 'stage "clf"' in server.requests[0]["messages"][1]["content"]
