"""One client address sending all the traffic (the bench's load generator, a single validator, a
proxy): a brief overload must not leave the server slower once the load drops, and the per-client
defences must follow what the client sent, not the server's own overload."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from server_support import slow_first_tier, write_pipeline  # noqa: E402  (tests/server on sys.path, see conftest)
from tests.reliability.corpus import attack_inputs
from tests.reliability.fuzz import HttpRequest, raw_request
from workzone.throughput.http import _load

ATTACKER = "127.0.0.2"


@pytest.fixture(scope="module")
def attacks() -> dict[str, bytes]:
    return attack_inputs()


def _jpeg(side: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
    return buf.getvalue()


def test_a_brief_overload_from_one_address_recovers_to_the_full_rate(live_server, model_dir: Path):
    """Overload, a lull of one-image batches (0.4 s an image, 8x what an image cost in the full
    batches), then 12 requests/s: the shared lane's batches answer them all. Were the one client moved
    to the costly lane (one image at a time, 2.5 a second), it would answer a fifth of them, seconds late."""
    # a fixed cost per batch, whatever its size (as a GPU's)
    pipeline = write_pipeline(model_dir, "one_address", first_tier=slow_first_tier(0.4), deadline_s=10.0)
    srv = live_server(pipeline=str(pipeline), batch_size=8, batch_wait_ms=50)
    blobs = [_jpeg(64, seed) for seed in range(8)]

    async def go():
        burst = await _load(httpx, srv.url, blobs, rate=40, seconds=2, addresses=1, warm=0)
        lull = await _load(httpx, srv.url, blobs, rate=1, seconds=3, addresses=1, warm=0)
        after = await _load(httpx, srv.url, blobs, rate=12, seconds=4, addresses=1, warm=0)
        return burst, lull, after

    burst, lull, after = asyncio.run(go())
    assert burst.answers["200"] > 0 and lull.answers == {"200": 3}
    assert after.answers == {"200": 48}, after.answers
    assert np.percentile(after.lat, 99) < 2000, np.percentile(after.lat, 99)
    assert not srv.app.state.service.client_costs.is_costly("127.0.0.1")


def test_memory_refusals_strike_only_requests_that_need_much_of_the_budget(live_server, model_dir: Path, attacks):
    """An ordinary image (224 px, a 1920x1080 frame) refused because the server's memory is full is not
    its client's doing: no penalty after sixteen. A 24-MP WebP refused the same way still is (its client is held)."""
    srv = live_server(pipeline=str(write_pipeline(model_dir, "strikes")), refusal_penalty_s=0.5,
                      max_held_bytes=270 * 2**20)
    admission = srv.app.state.admission
    small = _jpeg(224)
    frame = io.BytesIO()
    PILImage.new("RGB", (1920, 1080), (90, 120, 80)).save(frame, "JPEG", quality=75)

    async def eight(body: bytes, ctype: str) -> list[float]:
        times = []
        for _ in range(8):  # back to back, ignoring Retry-After
            r = await raw_request("127.0.0.1", srv.port, HttpRequest("/v1/detect", ctype, body), 10, ATTACKER)
            assert r.status == 429
            times.append(r.latency_s)
        return times

    # 100 kB left: a 224x224 image's pixels (150 kB) no longer fit, nor a 1920x1080 frame's (6 MB; 24 MiB with its
    # decode), which is under an eighth of the budget, so no strike either.
    full = admission.max_held_bytes - 100_000 - admission.held_bytes
    admission.held_bytes += full
    try:
        small_times = asyncio.run(eight(small, "image/jpeg")) + asyncio.run(eight(frame.getvalue(), "image/jpeg"))
        assert admission.penalty(ATTACKER) == 0 and max(small_times) < 0.4, small_times
    finally:
        admission.held_bytes -= full
    admission.held_bytes += 40 * 2**20  # a 24-MP WebP's decode does not fit beside another request's 40 MiB
    try:
        large_times = asyncio.run(eight(attacks["webp_4896"], "image/webp"))
    finally:
        admission.held_bytes -= 40 * 2**20
    assert admission.penalty(ATTACKER) == 0.5 and min(large_times[6:]) >= 0.5, large_times
