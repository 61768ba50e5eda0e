"""A real two-tier cascade: tiny ONNX classifier, then vlm_openai against a loopback server.

Only images tier 1 cannot decide reach the server; when the server dies mid-run every image is
still decided, with the stage error and the breaker state on record.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from tests.conftest import build_tiny_classifier
from tests.fakes.openai_server import FakeOpenAIServer, Reply
from workzone.cascade import Cascade
from workzone.config.loader import parse_pipeline
from workzone.types import Image, logit, sigmoid

PIPELINE = """
name: vlm-cascade-test
tiers:
  - name: fast
    stages:
      - {{name: clf, kind: onnx_classifier, model: tiny.onnx, threads: 1}}
    fusion: {{weights: {{clf: 1.0}}}}
    exit: {{lower: 0.2, upper: 0.8}}
  - name: vlm
    stages:
      - name: vlm
        kind: vlm_openai
        base_url: "{url}"
        model: fake-vlm
        max_pixels: 4096
        retries: 1
        retry_backoff_s: 0.01
        breaker_failures: 3
        breaker_cooldown_s: 60
        timeout_s: 5              # the cascade's limit for the batch
        request_timeout_s: 4      # the stage's limit per HTTP request
    fusion: {{weights: {{clf: 0.5, vlm: 1.0}}}}
"""

# Tiny classifier: logit = 4 * (mean red - mean blue), in [0, 1] units.
RED, BLUE, GRAY, MAUVE = (250, 0, 0), (0, 0, 250), (128, 128, 128), (150, 20, 120)


def solid(rgb) -> Image:
    return Image(np.full((40, 56, 3), rgb, np.uint8), source=str(rgb))


@pytest.fixture
def setup(tmp_path):
    build_tiny_classifier(tmp_path / "tiny.onnx", weights=(4.0, 0.0, -4.0))
    server = FakeOpenAIServer(Reply(p_yes=0.9)).start()
    cfg = parse_pipeline(PIPELINE.format(url=server.url))
    yield cfg, server, tmp_path
    server.stop()


def test_only_undecided_images_reach_the_vlm(setup):
    cfg, server, base = setup
    images = [solid(RED), solid(GRAY), solid(BLUE), solid(MAUVE)]

    async def go():
        async with Cascade.from_config(cfg, base_dir=base) as cascade:
            vlm = next(s for s in cascade.stages if s.name == "vlm")
            # `timeout_s` in a stage entry belongs to the cascade; the HTTP limit is the stage's own.
            assert vlm.params.request_timeout_s == 4 and cascade.config.tiers[1].stages[0].timeout_s == 5
            return await cascade.run(images)

    ds = asyncio.run(go())
    assert [d.exit_tier for d in ds] == [0, 1, 0, 1]
    assert len(server.requests) == 2  # red and blue left after tier 1
    for d in (ds[1], ds[3]):
        clf, vlm = d.stages
        assert (clf.stage, vlm.stage) == ("clf", "vlm") and vlm.error is None
        assert vlm.probability == pytest.approx(0.9, abs=1e-6)
        assert d.probability == pytest.approx(sigmoid(0.5 * clf.log_odds + logit(0.9)), abs=1e-6)
    assert [r.stage for r in ds[0].stages] == ["clf"] and ds[0].probability > 0.8
    assert ds[2].probability < 0.2


def test_server_dying_mid_run_still_decides_every_image(setup):
    cfg, server, base = setup
    images = [solid(GRAY), solid(MAUVE), solid(RED)]

    async def go():
        async with Cascade.from_config(cfg, base_dir=base) as cascade:
            vlm = next(s for s in cascade.stages if s.name == "vlm")
            stopping = threading.Lock()

            def reply(body):
                # The server goes down once both VLM requests are in flight (and before it answers).
                if len(server.requests) == 2 and stopping.acquire(blocking=False):
                    threading.Timer(0.05, server.stop).start()
                return Reply(p_yes=0.9, delay_s=0.5)

            server.set_reply(reply)
            t = time.perf_counter()
            first = await cascade.run(images)
            assert time.perf_counter() - t < 3.0
            # One failure per image's request; 2 < breaker_failures, so the circuit is still closed.
            assert vlm.breaker.failures == 2 and vlm.describe()["breaker"]["state"] == "closed"
            second = await cascade.run(images)  # refused connections: failures 3 and 4 open it
            state_after_second = vlm.describe()["breaker"]
            t = time.perf_counter()
            third = await cascade.run(images)  # open: the VLM is skipped without a request
            fast = time.perf_counter() - t
            return first, second, state_after_second, third, fast

    first, second, state, third, fast = asyncio.run(go())
    n_requests = len(server.requests)
    assert n_requests == 2  # only the requests in flight when it died (retries found nobody)
    for ds in (first, second, third):
        assert len(ds) == 3 and all(0.0 <= d.probability <= 1.0 for d in ds)
        assert ds[2].exit_tier == 0 and ds[2].errors == {}
        for d in ds[:2]:
            assert d.exit_tier == 1 and d.reason == "last tier"
            assert d.errors["vlm"].startswith("BackendUnavailable: stage 'vlm'")
            clf = d.stages[0]
            # Without the VLM the fusion falls back on the classifier alone.
            assert d.probability == pytest.approx(sigmoid(0.5 * clf.log_odds), abs=1e-6)
    assert "cannot reach" in second[0].errors["vlm"]
    assert state["state"] == "open" and state["failures"] == 4 and state["opened_at"] is not None
    assert "circuit breaker open" in third[0].errors["vlm"]
    assert fast < 0.5
