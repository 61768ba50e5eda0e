"""The HTTP boundary under hostile input and overload, against a real uvicorn server on loopback:
fuzzed requests never get a 5xx, bombs get 4xx at once, nothing internal leaks, admission refuses
before reading the body, slow clients are timed out, and no connection closes without an answer."""

from __future__ import annotations

import asyncio
import base64
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from server_support import write_pipeline  # noqa: E402  (tests/server on sys.path, see conftest)
from tests.reliability.fuzz import HttpRequest, http_requests, raw_request
from tests.reliability.corpus import load_seeds
from workzone.server.fetch import is_public_address

SLOW_TIER = """\
  - name: slow
    stages:
      - {name: slow, kind: test_sleep, sleep_s: 0.3}
"""


@pytest.fixture(scope="module")
def fuzz_server(model_dir: Path):
    from server_support import LiveServer

    # No refusal penalty: one address sending mostly bad images is what fuzzing is (tested in test_attacks.py).
    srv = LiveServer(pipeline=str(write_pipeline(model_dir, "httpfuzz")), max_batch_images=4,
                     refusal_penalty_s=0).start()
    yield srv
    srv.stop()


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(http_requests())
def test_fuzzed_requests_never_get_a_server_error(fuzz_server, req: HttpRequest) -> None:
    headers = dict(req.headers)
    if req.content_type is not None:
        headers["Content-Type"] = req.content_type
    t = time.perf_counter()
    r = httpx.post(fuzz_server.url + req.path, content=req.body, headers=headers, timeout=15)
    assert time.perf_counter() - t < 10
    assert r.status_code < 500, (req.path, req.content_type, r.text[:300])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["status"] == r.status_code and err["message"] and "Traceback" not in r.text


@pytest.mark.parametrize("name", ["png16_8944", "float_tiff_8944", "progressive_1000_scans"])
def test_bombs_get_422_and_batches_get_a_short_error_per_image(fuzz_server, bomb_inputs, name):
    r = httpx.post(fuzz_server.url + "/v1/detect", content=bomb_inputs[name],
                   headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_image"
    ok = base64.b64encode(load_seeds()["baseline.jpg"]).decode()
    bomb = base64.b64encode(bomb_inputs[name]).decode()
    r = httpx.post(fuzz_server.url + "/v1/detect/batch", json={"images": [{"image": ok}, {"image": bomb}]}, timeout=30)
    assert r.status_code == 200
    good, bad = r.json()["results"]
    assert good["decision"]["probability"] >= 0 and bad["error"]["type"] == "invalid_image"
    assert len(bad["error"]["message"]) <= 300


def test_readiness_details_only_for_authenticated_callers(live_server, model_dir: Path, tmp_path: Path):
    broken = write_pipeline(model_dir, "broken", first_tier=(
        "  - name: fast\n    stages:\n      - {name: clf, kind: onnx_classifier, model: missing.onnx}\n"))
    key = "k" * 16
    srv = live_server(pipeline=str(broken), wait_ready=False, api_keys=(key,))
    end = time.monotonic() + 20
    while httpx.get(srv.url + "/readyz").json()["state"] != "failed":
        assert time.monotonic() < end
        time.sleep(0.05)
    anonymous = httpx.get(srv.url + "/readyz")
    assert anonymous.status_code == 503 and anonymous.json()["load_error"] is None
    assert str(model_dir) not in anonymous.text and "missing.onnx" not in anonymous.text
    authed = httpx.get(srv.url + "/readyz", headers={"X-API-Key": key})
    assert "missing.onnx" in authed.json()["load_error"]
    r = httpx.post(srv.url + "/v1/detect", content=b"x", headers={"X-API-Key": key, "Content-Type": "image/jpeg"})
    assert r.status_code == 503 and str(model_dir) not in r.text and "missing.onnx" not in r.text


def test_admission_refuses_before_reading_and_nothing_is_dropped(live_server, model_dir: Path):
    # 40 clients against 4 admitted requests of a 0.3 s tier: the rest are refused at once, none
    # waits for the body to be read or decoded, every connection gets a status line.
    srv = live_server(pipeline=str(write_pipeline(model_dir, "admit", more_tiers=SLOW_TIER, deadline_s=5)),
                      max_inflight=4)
    body = load_seeds()["baseline.jpg"]
    req = HttpRequest("/v1/detect", "image/jpeg", body)

    async def go():
        return await asyncio.gather(*(raw_request("127.0.0.1", srv.port, req, timeout_s=20) for _ in range(40)))

    results = asyncio.run(go())
    assert all(r.status is not None for r in results), [r.error for r in results if r.status is None]
    statuses = sorted({r.status for r in results})
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses
    refused = sorted(r.latency_s for r in results if r.status == 429)
    served = sorted(r.latency_s for r in results if r.status == 200)
    assert refused[len(refused) // 2] < served[0]  # refusals do not wait behind the admitted work
    admission = srv.app.state.admission
    assert admission.inflight == 0 and admission.held_bytes == 0 and admission.refused >= len(refused)


def test_deadline_counts_from_arrival_and_expired_work_is_answered_degraded(live_server, model_dir: Path):
    srv = live_server(pipeline=str(write_pipeline(model_dir, "expire", more_tiers=SLOW_TIER, deadline_s=5)),
                      batch_size=1)
    body = load_seeds()["baseline.jpg"]

    async def go():
        async with httpx.AsyncClient(timeout=10) as client:
            return await asyncio.gather(*(client.post(srv.url + "/v1/detect", content=body, headers={
                "Content-Type": "image/jpeg", "X-Deadline-S": "0.5"}) for _ in range(6)))

    t = time.perf_counter()
    responses = asyncio.run(go())
    assert time.perf_counter() - t < 3.0  # six 0.3 s requests for one queue, each answered within its 0.5 s
    # Admission takes what a cold server can answer (one running, two queued) and refuses the rest at once;
    # of the admitted, those whose deadline passes in the queue or in the cascade are marked degraded.
    assert {r.status_code for r in responses} <= {200, 429}
    decisions = [r.json() for r in responses if r.status_code == 200]
    assert len(decisions) >= 3 and any(d["degraded"] for d in decisions)
    assert all(d["degraded_reason"] for d in decisions if d["degraded"])


def _slow_client(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.settimeout(10)
        chunks = []
        while True:
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_slow_headers_and_slow_bodies_are_timed_out_with_408(live_server, model_dir: Path):
    srv = live_server(pipeline=str(write_pipeline(model_dir, "slowloris")), header_timeout_s=0.5, body_timeout_s=0.5)
    t = time.perf_counter()
    answer = _slow_client(srv.port, b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Ty")
    assert answer.startswith(b"HTTP/1.1 408") and time.perf_counter() - t < 5
    t = time.perf_counter()
    answer = _slow_client(srv.port, b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                                    b"Content-Length: 1000\r\n\r\n0123456789")
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer and time.perf_counter() - t < 5
    assert httpx.get(srv.url + "/healthz").status_code == 200


@pytest.mark.parametrize("addr, public", [
    ("2002:a9fe:a9fe::", False),                 # 6to4 embedding 169.254.169.254
    ("2002:7f00:1::", False),                    # 6to4 embedding 127.0.0.1
    ("2001:0:a9fe:a9fe::f5ff:fffe", False),      # Teredo
    ("64:ff9b::a9fe:a9fe", False),               # NAT64 well-known prefix
    ("64:ff9b:1::a00:1", False),                 # NAT64 local-use prefix
    ("::ffff:10.0.0.1", False),                  # IPv4-mapped
    ("::10.0.0.1", False),                       # IPv4-compatible
    ("2002:808:808::", True),                    # 6to4 of a public address
    ("2606:4700:4700::1111", True),
])
def test_ssrf_guard_checks_the_ipv4_address_an_ipv6_address_embeds(addr, public):
    assert is_public_address(addr) is public


def test_cors_is_off_by_default_and_on_when_configured(live_server, model_dir: Path):
    pipeline = str(write_pipeline(model_dir, "cors"))
    off = live_server(pipeline=pipeline)
    r = httpx.options(off.url + "/v1/detect", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    on = live_server(pipeline=pipeline, cors_origins=("https://a.example",))
    r = httpx.options(on.url + "/v1/detect", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
    assert r.headers["access-control-allow-origin"] == "https://a.example"


def test_serving_beyond_loopback_without_keys_warns(caplog):
    from workzone.server.app import warn_if_exposed
    from workzone.server.settings import ServerSettings

    with caplog.at_level("WARNING", logger="workzone.server"):
        warn_if_exposed(ServerSettings(host="127.0.0.1"))
        warn_if_exposed(ServerSettings(host="0.0.0.0", api_keys=("k" * 12,)))
        assert not caplog.records
        warn_if_exposed(ServerSettings(host="0.0.0.0"))
    assert "without API keys" in caplog.records[0].getMessage()
