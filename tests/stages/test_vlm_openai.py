"""vlm_openai against a loopback OpenAI-compatible server speaking vLLM's wire format."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import time

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.fakes.openai_server import FakeOpenAIServer, Reply
from workzone.errors import BackendUnavailable, ConfigError, DeadlineExceeded, StageError
from workzone.stages._remote import BreakerState
from workzone.stages.registry import create_stage
from workzone.stages.vlm_openai import classify_answer_token, image_data_url, yes_no_log_odds
from workzone.types import Image, sigmoid


def img(w=64, h=48, v=128) -> Image:
    return Image(np.full((h, w, 3), v, np.uint8))


def make_stage(url: str, **params):
    base = {"base_url": url, "model": "fake-vlm", "retries": 0, "request_timeout_s": 5}
    base.update(params)
    return create_stage("vlm_openai", "vlm", base)


async def _predict(stage, batch):
    await stage.load()
    try:
        return await stage.predict(batch)
    finally:
        await stage.aclose()


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.mark.parametrize("p_yes", [0.02, 0.3, 0.5, 0.9, 0.995])
def test_probability_from_first_token_logprobs(server, p_yes):
    server.set_reply(Reply(p_yes=p_yes))
    out = asyncio.run(_predict(make_stage(server.url), [img()]))
    # Y and N each sum three variants ("Yes", "yes", " Yes"); normalising them recovers p_yes.
    assert sigmoid(out[0].log_odds) == pytest.approx(p_yes, abs=1e-6)
    assert f"P(yes)={p_yes:.3f}" in out[0].evidence.notes[0]


def test_request_matches_the_chat_protocol(server):
    stage = make_stage(server.url, max_pixels=32 * 32, top_logprobs=7, question="Road work?",
                       structured_choice="structured_outputs", extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    asyncio.run(_predict(stage, [img(200, 100)]))
    body = server.requests[0]
    assert body["model"] == "fake-vlm" and body["logprobs"] is True and body["top_logprobs"] == 7
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0
    assert body["structured_outputs"] == {"choice": ["yes", "no"]}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    content = body["messages"][-1]["content"]
    assert content[1] == {"type": "text", "text": "Road work?"}
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    sent = PILImage.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "JPEG" and sent.width * sent.height <= 32 * 32
    assert abs(sent.width / sent.height - 2.0) < 0.2  # aspect kept


def test_guided_choice_and_api_key_from_env(server, monkeypatch):
    monkeypatch.setenv("WZ_TEST_KEY", "sekrit")
    stage = make_stage(server.url, structured_choice="guided_choice", api_key_env="WZ_TEST_KEY")
    asyncio.run(_predict(stage, [img()]))
    body = server.requests[0]
    assert body["guided_choice"] == ["yes", "no"] and "structured_outputs" not in body
    assert body["_headers"]["authorization"] == "Bearer sekrit"


def test_api_key_env_must_name_a_set_variable(server, monkeypatch):
    monkeypatch.delenv("WZ_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match="WZ_UNSET_KEY"):
        asyncio.run(_predict(make_stage(server.url, api_key_env="WZ_UNSET_KEY"), [img()]))


def test_a_key_is_not_a_variable_name():
    with pytest.raises(ConfigError, match="api_key_env"):
        make_stage("http://127.0.0.1:1/v1", api_key_env="sk-abc123")


def test_text_fallback_when_no_yes_no_in_logprobs(server):
    server.set_reply(Reply(p_yes=0.9, yes_no_in_top=False, text=None))
    stage = make_stage(server.url, text_log_odds=1.5)
    out = asyncio.run(_predict(stage, [img()]))
    # The argmax token is a filler, so the text is not yes/no either: abstain.
    assert out[0].log_odds is None and "abstained" in out[0].evidence.notes[0]
    server.set_reply(Reply(text="Yes, there are cones."))
    out = asyncio.run(_predict(make_stage(server.url, text_log_odds=1.5), [img()]))
    # The text reply's logprobs list only the sampled "Yes," token: that alone scores it.
    assert out[0].log_odds > 0
    server.set_reply(Reply(text="No."))
    stage = make_stage(server.url, text_log_odds=1.5)
    out = asyncio.run(_predict(stage, [img()]))
    assert out[0].log_odds < 0


def test_text_only_answer_uses_text_log_odds():
    stage = make_stage("http://127.0.0.1:1/v1", text_log_odds=1.5)
    data = {"choices": [{"message": {"content": "yes"}, "logprobs": None}]}
    out = stage.interpret(data)
    assert out.log_odds == 1.5 and "from the text" in out.evidence.notes[0]
    out = stage.interpret({"choices": [{"message": {"content": "**No**"}}]})
    assert out.log_odds == -1.5


@pytest.mark.parametrize("top, expected", [
    ([{"token": "Yes", "logprob": math.log(0.6)}, {"token": "no", "logprob": math.log(0.3)}], math.log(2)),
    ([{"token": " YES", "logprob": math.log(0.5)}, {"token": "Yes", "logprob": math.log(0.25)},
      {"token": "No", "logprob": math.log(0.25)}], math.log(3)),
    ([{"token": "The", "logprob": -0.1}, {"token": "Sure", "logprob": -3.0}], None),
    # Only yes is listed: no is bounded by the unlisted mass 0.1 (smaller than the least listed 0.1).
    ([{"token": "Yes", "logprob": math.log(0.8)}, {"token": "I", "logprob": math.log(0.1)}], math.log(8)),
    ([{"token": "No", "logprob": -9999.0}, {"token": "Yes", "logprob": 0.0}], None),
])
def test_yes_no_log_odds_table(top, expected):
    got = yes_no_log_odds(top)
    if expected is None and top[0]["token"] == "No":
        assert got > 700  # -9999 is vLLM's -inf: yes wins overwhelmingly; the stage clips it
    elif expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, rel=1e-6)


def test_scores_are_clipped(server):
    server.set_reply(Reply(p_yes=1.0))
    out = asyncio.run(_predict(make_stage(server.url, max_log_odds=6.0), [img()]))
    assert out[0].log_odds == 6.0


@pytest.mark.parametrize("tok, side", [("Yes", "yes"), ("\u2581yes", "yes"), ("NO!", "no"), ("Yesterday", None),
                                       ("", None), ("N", None)])
def test_classify_answer_token(tok, side):
    assert classify_answer_token(tok) == side


def test_timeout_becomes_deadline_exceeded(server):
    server.set_reply(Reply(delay_s=1.0))
    with pytest.raises(DeadlineExceeded, match="did not answer within 0.2 s") as ei:
        asyncio.run(_predict(make_stage(server.url, request_timeout_s=0.2), [img()]))
    assert ei.value.stage == "vlm" and ei.value.__cause__ is not None


@pytest.mark.parametrize("reply, err, match", [
    (Reply(status=500), BackendUnavailable, "HTTP 500: fake failure 500"),
    (Reply(status=429), BackendUnavailable, "HTTP 429"),
    (Reply(body=b"{not json"), BackendUnavailable, "malformed response"),
    (Reply(body=b'{"choices": []}'), BackendUnavailable, "malformed response"),
    (Reply(status=400), StageError, "refused the request: HTTP 400"),
])
def test_errors_are_translated_at_the_boundary(server, reply, err, match):
    server.set_reply(reply)
    with pytest.raises(err, match=match) as ei:
        asyncio.run(_predict(make_stage(server.url), [img()]))
    if err is StageError:
        assert not isinstance(ei.value, BackendUnavailable)


def test_wrong_model_is_a_stage_error_not_an_outage(server):
    with pytest.raises(StageError, match="does not exist") as ei:
        asyncio.run(_predict(make_stage(server.url, model="other"), [img()]))
    assert not isinstance(ei.value, BackendUnavailable)


def test_connection_refused_becomes_backend_unavailable():
    srv = FakeOpenAIServer().start()
    url = srv.url
    srv.stop()
    with pytest.raises(BackendUnavailable, match="cannot reach .*is the server running"):
        asyncio.run(_predict(make_stage(url), [img()]))


def test_retries_absorb_a_transient_500(server):
    seen = []

    def reply(body):
        seen.append(1)
        return Reply(status=503) if len(seen) == 1 else Reply(p_yes=0.8)

    server.set_reply(reply)
    out = asyncio.run(_predict(make_stage(server.url, retries=2, retry_backoff_s=0.01), [img()]))
    assert sigmoid(out[0].log_odds) == pytest.approx(0.8, abs=1e-6)
    assert len(server.requests) == 2


def test_breaker_opens_then_half_open_trial_recovers(server):
    stage = make_stage(server.url, breaker_failures=3, breaker_cooldown_s=0.3)

    async def go():
        await stage.load()
        server.set_reply(Reply(status=500))
        for _ in range(3):
            with pytest.raises(BackendUnavailable, match="HTTP 500"):
                await stage.predict([img()])
        assert stage.breaker.state is BreakerState.OPEN and stage.breaker.failures == 3
        assert stage.describe()["breaker"]["state"] == "open"
        n = len(server.requests)
        t = time.perf_counter()
        with pytest.raises(BackendUnavailable, match="circuit breaker open"):
            await stage.predict([img()])
        assert time.perf_counter() - t < 0.1 and len(server.requests) == n  # failed fast, no request
        await asyncio.sleep(0.35)
        assert stage.breaker.state is BreakerState.HALF_OPEN
        server.set_reply(Reply(p_yes=0.7))
        out = await stage.predict([img()])
        assert sigmoid(out[0].log_odds) == pytest.approx(0.7, abs=1e-6)
        assert stage.breaker.state is BreakerState.CLOSED and stage.breaker.failures == 0
        await stage.aclose()

    asyncio.run(go())


def test_concurrency_is_bounded(server):
    server.set_reply(Reply(delay_s=0.15))
    stage = make_stage(server.url, max_concurrency=2)
    t = time.perf_counter()
    out = asyncio.run(_predict(stage, [img() for _ in range(6)]))
    elapsed = time.perf_counter() - t
    assert len(out) == 6 and len(server.requests) == 6
    assert server.max_in_flight == 2
    assert elapsed >= 3 * 0.15 * 0.9  # 6 requests, 2 at a time


def test_partial_failure_abstains_only_for_the_failed_image(server):
    def reply(body):
        return Reply(status=500) if len(server.requests) == 2 else Reply(p_yes=0.9)

    server.set_reply(reply)
    out = asyncio.run(_predict(make_stage(server.url, max_concurrency=1), [img(), img(), img()]))
    assert [o.log_odds is None for o in out] == [False, True, False]
    assert "request failed" in out[1].evidence.notes[0]


def test_image_data_url_keeps_small_images():
    url = image_data_url(np.zeros((10, 20, 3), np.uint8), 10_000)
    sent = PILImage.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (20, 10)


def test_load_contacts_nobody_and_predict_before_load_fails():
    stage = make_stage("http://127.0.0.1:9/v1")
    with pytest.raises(StageError, match="before load"):
        asyncio.run(stage.predict([img()]))
    asyncio.run(stage.load())  # no server on port 9: load must still succeed
    assert stage.describe()["breaker"]["state"] == "closed"
    asyncio.run(stage.aclose())
