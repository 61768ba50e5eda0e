"""The cheap attacks of issue 20, each against a real server on loopback (short versions; the load
runs are in benchmarks/reliability.py): slow bodies, CPU bombs, memory charged after decoding, a
URL fetch outliving its deadline, unmarked degraded answers and leaked backend URLs, IFD/EXIF
bombs, oversized headers, and the small points (malformed multipart, SSRF ranges, breaker)."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from server_support import FAST_TIER, write_pipeline  # noqa: E402  (tests/server on sys.path, see conftest)
from tests.fakes.openai_server import FakeOpenAIServer, Reply
from tests.reliability.corpus import attack_inputs, load_seeds
from workzone.errors import InvalidImageError, UrlFetchFailed
from workzone.io.images import decode_image
from workzone.server.fetch import fetch_image_bytes, is_public_address

ATTACKER = "127.0.0.2"  # loopback too (all of 127/8 is), but another client address than the honest 127.0.0.1


@pytest.fixture(scope="module")
def attacks() -> dict[str, bytes]:
    return attack_inputs()


def _slow_body(port: int, deadline: str | None = None, source: str = ATTACKER) -> socket.socket:
    """A client that sends its headers and the first byte of a 100 KB body, then nothing more for now."""
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    extra = f"X-Deadline-S: {deadline}\r\n" if deadline else ""
    s.sendall(f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n"
              f"{extra}\r\nx".encode())
    return s


def _status(s: socket.socket, timeout: float) -> tuple[int | None, float]:
    """The status code the server sends on ``s`` and when (seconds from now); None if it sends none."""
    t = time.perf_counter()
    s.settimeout(timeout)
    try:
        head = s.recv(64)
    except (socket.timeout, ConnectionError):
        return None, time.perf_counter() - t
    return (int(head.split()[1]) if head.startswith(b"HTTP/1.1") else None), time.perf_counter() - t


def test_slow_bodies_are_not_queued_work_and_have_a_per_client_limit(live_server, model_dir: Path):
    try:
        socket.socket().bind((ATTACKER, 0))
    except OSError:
        pytest.skip(f"cannot bind {ATTACKER} (loopback is not 127/8 here)")
    srv = live_server(pipeline=str(write_pipeline(model_dir, "slowbody")), max_uploads_per_client=4,
                      max_inflight=8)
    slow = [_slow_body(srv.port) for _ in range(12)]
    try:
        # Beyond the attacker's 4 uploads, its connections are refused at once, before any body.
        statuses = [_status(s, 3.0) for s in slow[4:]]
        assert all(code == 429 and t < 2.0 for code, t in statuses), statuses
        assert srv.app.state.admission.inflight == 0  # bodies still arriving are not queued work
        body = load_seeds()["baseline.jpg"]
        for _ in range(10):  # the honest client (another address) with a short deadline is served
            r = httpx.post(srv.url + "/v1/detect", content=body, timeout=10,
                           headers={"Content-Type": "image/jpeg", "X-Deadline-S": "2"})
            assert r.status_code == 200 and not r.json()["degraded"], r.text
    finally:
        for s in slow:
            s.close()


def test_a_body_must_arrive_whole_within_the_deadline(live_server, model_dir: Path):
    # body_timeout_s is 30 s and each chunk comes well within it: the 1-s deadline still ends it.
    srv = live_server(pipeline=str(write_pipeline(model_dir, "trickle")), body_timeout_s=30)
    s = _slow_body(srv.port, deadline="1", source="127.0.0.1")
    try:
        t = time.perf_counter()
        for _ in range(8):
            time.sleep(0.25)
            try:
                s.sendall(b"y")
            except OSError:
                break
        code, _ = _status(s, 5.0)
        assert code == 408 and time.perf_counter() - t < 3.0
    finally:
        s.close()
    assert _released(srv.app.state.admission)


def _released(admission) -> bool:
    """True once nothing is held (the response goes out before a request's bookkeeping is released)."""
    end = time.monotonic() + 5
    while (admission.uploads or admission.held_bytes or admission.inflight) and time.monotonic() < end:
        time.sleep(0.02)
    return not (admission.uploads or admission.held_bytes or admission.inflight)


def test_unbounded_decoders_are_refused_from_the_header(attacks):
    t = time.perf_counter()
    with pytest.raises(InvalidImageError, match="RLE-compressed BMP"):
        decode_image(attacks["rle_bmp_4000"])  # Pillow alone takes seconds on it (benchmarks/reliability.py)
    assert time.perf_counter() - t < 0.5


def _noise_png(side: int, seed: int = 0) -> bytes:
    px = np.random.default_rng(seed).integers(0, 256, (side, side, 3), np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(px).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def test_a_decode_past_its_cpu_budget_is_killed_and_the_server_goes_on(live_server, model_dir: Path):
    srv = live_server(pipeline=str(write_pipeline(model_dir, "cpubudget")), image_decode_cpu_s=0.02)
    big = _noise_png(2400)  # tens of ms of CPU to decode: over this server's 0.02 s
    t = time.perf_counter()
    r = httpx.post(srv.url + "/v1/detect", content=big, headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["type"] == "decode_budget_exceeded", r.text
    assert time.perf_counter() - t < 3.0
    assert srv.app.state.service.decoder.processes.killed >= 1
    assert "workzone_decoder_kills_total 1.0" in httpx.get(srv.url + "/metrics").text
    ok = httpx.post(srv.url + "/v1/detect", content=load_seeds()["baseline.jpg"],
                    headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert ok.status_code == 200  # the killed decoder was replaced


def test_a_batch_shares_one_decode_budget_and_is_refused_whole(live_server, model_dir: Path):
    srv = live_server(pipeline=str(write_pipeline(model_dir, "batchbudget")), request_decode_cpu_s=0.01,  # one CPU tick
                      max_batch_images=64)
    files = [("images", (f"{k}.png", _noise_png(700, k), "image/png")) for k in range(12)]  # ~20 ms of CPU each
    t = time.perf_counter()
    r = httpx.post(srv.url + "/v1/detect/batch", files=files, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["type"] == "decode_budget_exceeded", r.text[:300]
    assert time.perf_counter() - t < 5.0


def test_a_batch_of_unreadable_images_is_refused_whole(fuzz_like_server, attacks):
    bomb = base64.b64encode(attacks["rle_bmp_4000"]).decode()
    t = time.perf_counter()
    r = httpx.post(fuzz_like_server.url + "/v1/detect/batch", json={"images": [{"image": bomb}] * 64}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_image", r.text[:300]
    assert time.perf_counter() - t < 2.0


@pytest.fixture(scope="module")
def fuzz_like_server(model_dir: Path):
    from server_support import LiveServer

    srv = LiveServer(pipeline=str(write_pipeline(model_dir, "attacks")), max_batch_images=64).start()
    yield srv
    srv.stop()


def test_pixels_are_reserved_from_the_header_before_decoding(live_server, model_dir: Path, attacks):
    srv = live_server(pipeline=str(write_pipeline(model_dir, "reserve")), max_held_bytes=100 * 2**20)
    webp = base64.b64encode(attacks["webp_4896"]).decode()  # 1 KB that decodes to 48 MiB (after downscaling)
    decoder = srv.app.state.service.decoder.processes
    r = httpx.post(srv.url + "/v1/detect/batch", json={"images": [{"image": webp}] * 6}, timeout=60)
    assert r.status_code == 422 and "MiB once decoded" in r.json()["error"]["message"]  # 288 MiB > 100 MiB
    assert decoder.decoded == 0  # refused from the headers: not one pixel decoded
    # One image: its 48 MiB of pixels fit, but decoding it needs about 240 MiB (the decoder's memory
    # is reserved too, from the header): refused before decoding, whatever else is held.
    r = httpx.post(srv.url + "/v1/detect", content=attacks["webp_4896"], headers={"Content-Type": "image/webp"},
                   timeout=60)
    assert r.status_code == 422 and "while decoding" in r.json()["error"]["message"] and decoder.decoded == 0
    srv2 = live_server(pipeline=str(write_pipeline(model_dir, "reserve2")), max_held_bytes=270 * 2**20)
    admission = srv2.app.state.admission
    admission.held_bytes += 40 * 2**20  # another request holds 40 MiB

    r = httpx.post(srv2.url + "/v1/detect", content=attacks["webp_4896"], headers={"Content-Type": "image/webp"},
                   timeout=60)
    assert r.status_code == 429 and srv2.app.state.service.decoder.processes.decoded == 0
    admission.held_bytes -= 40 * 2**20
    assert _released(admission)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def test_a_large_image_is_decided_within_its_reservation_and_300_mb(live_server, model_dir: Path, attacks):
    import os

    srv = live_server(pipeline=str(write_pipeline(model_dir, "reserve3")))  # the default budget, 256 MiB
    service, admission = srv.app.state.service, srv.app.state.admission
    ok = httpx.post(srv.url + "/v1/detect", content=load_seeds()["baseline.jpg"],
                    headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert ok.status_code == 200  # the decoders are started
    pids = [os.getpid()] + [w.proc.pid for w in service.decoder.processes._all]
    before = sum(_rss(p) for p in pids)
    peak, held, done = [before], [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], sum(_rss(p) for p in pids))
            held[0] = max(held[0], admission.held_bytes)
            time.sleep(0.005)

    th = threading.Thread(target=sample)
    th.start()
    try:
        r = httpx.post(srv.url + "/v1/detect", content=attacks["webp_4896"], headers={"Content-Type": "image/webp"},
                       timeout=60)
    finally:
        done.set()
        th.join()
    assert r.status_code == 200, r.text[:300]
    assert peak[0] - before < 300 * 2**20, (peak[0] - before) / 2**20
    assert held[0] > 200 * 2**20  # the decode's own memory was reserved while it ran, not the pixels alone
    assert _released(admission)


def test_a_url_fetch_never_outlives_its_budget():
    # A server that sends its headers, then one byte of the body every 0.2 s, forever.
    ready = threading.Event()
    stop = threading.Event()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]

    def trickle() -> None:
        ready.set()
        conn, _ = lsock.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():
            try:
                conn.sendall(b"\xff")
            except OSError:
                break
            time.sleep(0.2)
        conn.close()

    th = threading.Thread(target=trickle, daemon=True)
    th.start()
    ready.wait()
    t = time.perf_counter()
    try:
        with pytest.raises(UrlFetchFailed, match="did not arrive whole within 1 s"):
            asyncio.run(fetch_image_bytes(f"http://127.0.0.1:{port}/a.jpg", max_bytes=10**6, timeout_s=5,
                                          total_s=1.0, allow=lambda addr: True))
        assert time.perf_counter() - t < 2.5  # each read came within timeout_s: only the total stops it
    finally:
        stop.set()
        lsock.close()
        th.join(5)


VLM_TIER = """\
  - name: vlm
    stages:
      - {{name: vlm, kind: vlm_openai, base_url: "{url}", model: fake-vlm, max_pixels: 4096, retries: 0,
          timeout_s: 5}}
    fusion: {{weights: {{clf: 0.5, vlm: 1.0}}}}
"""
NEVER_EXIT = FAST_TIER + "    fusion: {weights: {clf: 1.0}}\n    exit: {lower: 0.0, upper: 1.0}\n"


def test_an_image_that_lost_its_stage_is_marked_degraded_and_no_url_is_shown(live_server, model_dir: Path):
    pytest.importorskip("tenacity")
    backend = FakeOpenAIServer(Reply(p_yes=0.9)).start()
    lock, seen = threading.Lock(), []

    def every_other(body: dict) -> Reply:  # the second request of each pair gets HTTP 500
        with lock:
            seen.append(1)
            return Reply(p_yes=0.9) if len(seen) % 2 else Reply(status=500)

    backend.set_reply(every_other)
    try:
        srv = live_server(pipeline=str(write_pipeline(model_dir, "degraded", first_tier=NEVER_EXIT,
                                                      more_tiers=VLM_TIER.format(url=backend.url))))
        imgs = [{"image": base64.b64encode(load_seeds()[n]).decode()} for n in ("baseline.jpg", "rgb.png")]
        r = httpx.post(srv.url + "/v1/detect/batch", json={"images": imgs}, timeout=30)
        assert r.status_code == 200
        decisions = [x["decision"] for x in r.json()["results"]]
        assert sorted(d["degraded"] for d in decisions) == [False, True]
        lost = next(d for d in decisions if d["degraded"])
        assert lost["degraded_reason"] == "skipped failed stage(s) vlm (BackendUnavailable)"
        vlm = next(s for s in lost["stages"] if s["stage"] == "vlm")
        assert vlm["error"] == "BackendUnavailable" and vlm["evidence"]["notes"] == ["request failed: BackendUnavailable"]
        described = httpx.get(srv.url + "/v1/pipeline").text
        for text in (r.text, described):
            assert "http://" not in text and str(backend.port) not in text
    finally:
        backend.stop()


def test_headers_over_the_limit_get_431(live_server, model_dir: Path):
    srv = live_server(pipeline=str(write_pipeline(model_dir, "headers")), max_header_bytes=8192)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n")
        s.settimeout(5)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431") and b"headers_too_large" in answer
    ok = httpx.get(srv.url + "/healthz", headers={"X-Pad": "a" * 4000})
    assert ok.status_code == 200


def test_malformed_multipart_is_a_documented_bad_request(fuzz_like_server):
    r = httpx.post(fuzz_like_server.url + "/v1/detect", content=b"--x\r\nContent-Disposition: form-data\r\n\r\nab",
                   headers={"Content-Type": "multipart/form-data; boundary=x"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "bad_request", r.text


@pytest.mark.parametrize("addr", [
    "fec0::1",                      # IPv6 site-local (deprecated, still routed in places)
    "fe80::5efe:a9fe:a9fe",         # ISATAP embedding 169.254.169.254
    "2001:db8:1::200:5efe:a00:1",   # ISATAP (universal bit set) embedding 10.0.0.1
    "192.88.99.1",                  # 6to4 relay anycast
])
def test_ssrf_guard_refuses_the_ranges_issue_20_found(addr):
    assert not is_public_address(addr)


def test_isatap_with_a_public_ipv4_is_allowed():
    assert is_public_address("2606:4700::5efe:808:808")  # ISATAP id around 8.8.8.8 under a public prefix


def test_costly_images_wait_for_their_own_lower_priority_decoder():
    import os

    from workzone.io.decode_pool import DecodeBudget, DecodePool
    from workzone.io.images import ImageLimits, probe_image

    costly = _noise_png(2400)
    cheap = load_seeds()["baseline.jpg"]
    assert probe_image(costly).cost_s > 0.1 > probe_image(cheap).cost_s

    async def go() -> tuple[list[str], int]:
        pool = DecodePool(1, ImageLimits(), heavy_s=0.1, heavy_workers=1)
        await pool.start()
        try:
            order: list[str] = []

            async def one(name: str, data: bytes) -> None:
                await pool.decode(data, name, DecodeBudget(5.0), cost_s=probe_image(data).cost_s)
                order.append(name)

            # Two costly images queue for the one costly-lane decoder; the cheap one does not wait.
            await asyncio.gather(one("costly1", costly), one("costly2", costly), one("cheap", cheap))
            heavy = next(w for w in pool._all if w.heavy)
            return order, os.getpriority(os.PRIO_PROCESS, heavy.proc.pid) - os.getpriority(os.PRIO_PROCESS, 0)
        finally:
            await pool.aclose()

    order, nicer = asyncio.run(go())
    assert order[0] == "cheap" and nicer == 10


def test_a_stream_whose_deadline_passes_before_decoding_gets_the_prior_not_a_504(fuzz_like_server):
    r = httpx.post(fuzz_like_server.url + "/v1/detect/stream", content=load_seeds()["rgb.png"], timeout=10,
                   headers={"Content-Type": "image/png", "X-Deadline-S": "0.001"})
    assert r.status_code == 200 and r.text.startswith("event: decision")
    assert '"degraded":true' in r.text


def test_a_one_image_batch_whose_deadline_passes_gets_the_prior_not_a_504(fuzz_like_server):
    b64 = base64.b64encode(load_seeds()["rgb.png"]).decode()
    r = httpx.post(fuzz_like_server.url + "/v1/detect/batch", json={"images": [{"image": b64}]}, timeout=10,
                   headers={"X-Deadline-S": "0.001"})
    assert r.status_code == 200 and r.json()["results"][0]["decision"]["degraded"], r.text[:300]


def _eight_then_honest(port: int, path_type_body: tuple[str, bytes], status: int) -> tuple[list[float], float]:
    """Eight requests back to back from the attacker's address (each answered ``status``), then one
    honest request from 127.0.0.1: the attacker's latencies and the honest one's."""
    from tests.reliability.fuzz import HttpRequest, raw_request

    try:
        socket.socket().bind((ATTACKER, 0))
    except OSError:
        pytest.skip(f"cannot bind {ATTACKER}")

    async def go() -> tuple[list[float], float]:
        times = []
        for _ in range(8):  # back to back, ignoring Retry-After
            r = await raw_request("127.0.0.1", port, HttpRequest("/v1/detect", *path_type_body), 10, ATTACKER)
            assert r.status == status
            times.append(r.latency_s)
        r = await raw_request("127.0.0.1", port, HttpRequest("/v1/detect", "image/jpeg", load_seeds()["baseline.jpg"]),
                              10)
        assert r.status == 200
        return times, r.latency_s

    return asyncio.run(go())


def test_a_client_whose_images_keep_being_refused_is_slowed_down_others_are_not(live_server, model_dir: Path, attacks):
    srv = live_server(pipeline=str(write_pipeline(model_dir, "penalty")), refusal_penalty_s=0.5)
    times, honest = _eight_then_honest(srv.port, ("image/bmp", attacks["rle_bmp_4000"]), 422)
    assert max(times[:5]) < 0.4 and min(times[6:]) >= 0.5  # past 5 refusals, each costs the attacker 0.5 s
    assert honest < 0.4


def test_a_client_whose_images_memory_keeps_being_refused_is_slowed_down_too(live_server, model_dir: Path, attacks):
    srv = live_server(pipeline=str(write_pipeline(model_dir, "penalty429")), refusal_penalty_s=0.5,
                      max_held_bytes=270 * 2**20)
    admission = srv.app.state.admission
    admission.held_bytes += 40 * 2**20  # another request holds 40 MiB: a 24-MP WebP's decode does not fit now
    try:
        times, honest = _eight_then_honest(srv.port, ("image/webp", attacks["webp_4896"]), 429)
    finally:
        admission.held_bytes -= 40 * 2**20
    assert max(times[:5]) < 0.4 and min(times[6:]) >= 0.5  # refused in ms, but past 5 each costs 0.5 s
    assert honest < 0.4
    assert srv.app.state.service.decoder.processes.decoded == 1  # the honest image only


def test_decoding_in_threads_reserves_the_decodes_memory_too(live_server, model_dir: Path, attacks):
    srv = live_server(pipeline=str(write_pipeline(model_dir, "reserve_threads")), decode_processes=False,
                      max_held_bytes=270 * 2**20)
    admission = srv.app.state.admission
    admission.held_bytes += 40 * 2**20  # the pixels fit beside these 40 MiB; the decode's memory does not
    try:
        r = httpx.post(srv.url + "/v1/detect", content=attacks["webp_4896"], headers={"Content-Type": "image/webp"},
                       timeout=60)
        assert r.status_code == 429, r.text[:300]
    finally:
        admission.held_bytes -= 40 * 2**20
    r = httpx.post(srv.url + "/v1/detect", content=attacks["webp_4896"], headers={"Content-Type": "image/webp"},
                   timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert _released(admission)


def _costly_image_pipeline(model_dir: Path) -> Path:
    # The tiny classifier, then 0.5 s per megapixel: a 2-MP image costs the cascade about 1 s, a
    # 64x48 one under 2 ms (as a 16-MP image costs the default pipeline ten times a dashcam frame).
    tier = """\
  - name: sized
    stages:
      - name: clf
        kind: onnx_classifier
        model: tiny.onnx
        threads: 1
      - name: resize
        kind: test_sleep
        per_megapixel_s: 0.5
"""
    return write_pipeline(model_dir, "costly", first_tier=tier, deadline_s=10.0)


@pytest.mark.parametrize("costly_image_s", [0.2, 0.0])
def test_a_client_whose_images_cost_the_cascade_more_does_not_hold_up_others(live_server, model_dir: Path,
                                                                             costly_image_s: float):
    """Two clients: one sends 2-MP images back to back (1 s of cascade each), one sends small images
    in a closed loop. With the costly lane (0.2 s), the small images never wait behind a large one;
    with one lane for all (0), they do (the control: this test fails without the costly lane)."""
    try:
        socket.socket().bind((ATTACKER, 0))
    except OSError:
        pytest.skip(f"cannot bind {ATTACKER}")
    srv = live_server(pipeline=str(_costly_image_pipeline(model_dir)), costly_image_s=costly_image_s)
    big = {"content": _noise_png(1414), "headers": {"Content-Type": "image/png"}}  # 2.0 MP
    small = {"content": _noise_png(64), "headers": {"Content-Type": "image/png"}}
    with httpx.Client(timeout=30) as honest:  # what a typical image costs now
        assert all(honest.post(srv.url + "/v1/detect", **small).status_code == 200 for _ in range(8))
    with httpx.Client(transport=httpx.HTTPTransport(local_address=ATTACKER), timeout=30) as attacker:
        first = attacker.post(srv.url + "/v1/detect", **big)  # measured: from now on the client is costly
        assert first.status_code == 200, first.text
        stop = threading.Event()

        def attack() -> None:
            while not stop.is_set():
                assert attacker.post(srv.url + "/v1/detect", **big).status_code == 200

        thread = threading.Thread(target=attack, daemon=True)
        thread.start()
        latencies = []
        with httpx.Client(timeout=30) as honest:
            end = time.perf_counter() + 4.0
            while time.perf_counter() < end:
                t = time.perf_counter()
                assert honest.post(srv.url + "/v1/detect", **small).status_code == 200
                latencies.append(time.perf_counter() - t)
        stop.set()
        thread.join(30)
    costs = srv.app.state.service.client_costs
    assert costs.cost(ATTACKER) > 0.5 > costs.cost("127.0.0.1")  # each charged its own images' time
    if costly_image_s:
        assert max(latencies) < 0.5, f"a small image waited behind a large one: {max(latencies):.2f} s"
        assert len(latencies) > 20
    else:
        assert max(latencies) > 0.5  # one lane: the small images wait for the large ones' batches


def _refusal_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "workzone.access"]


def test_each_refusal_is_logged_with_its_reason_and_client_at_a_bounded_rate(live_server, model_dir: Path, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="workzone.access")
    loading = write_pipeline(model_dir, "loading", first_tier=FAST_TIER + "      - name: wait\n        kind: test_sleep\n"
                                                                           "        load_s: 60\n")
    srv = live_server(wait_ready=False, pipeline=str(loading), refusal_log_per_s=2)
    t = time.perf_counter()
    with httpx.Client(timeout=10) as client:
        codes = [client.post(srv.url + "/v1/detect?api_key=s3cret-in-query", content=b"x",
                             headers={"Content-Type": "image/jpeg"}).status_code for _ in range(40)]
        took = time.perf_counter() - t
        assert set(codes) == {503}  # still loading: refused before the body
        lines = _refusal_lines(caplog)
        assert 1 <= len(lines) <= 2 + 2 * took + 1, (took, lines)  # one second's burst, then 2 a second
        assert all("refused 503 not_ready client=127.0.0.1 POST /v1/detect" in line for line in lines)
        assert not any("s3cret" in line or "?" in line for line in lines)  # no query string
        time.sleep(1.1)
        client.post(srv.url + "/v1/detect", content=b"x", headers={"Content-Type": "image/jpeg"})
    import re

    every = _refusal_lines(caplog)  # the last request's line counts the ones left out before it
    left_out = sum(int(m) for line in every for m in re.findall(r"\((\d+) more refusals not logged", line))
    assert len(every) + left_out == 41 and left_out > 0, every


def test_a_refusal_decided_after_the_body_is_logged_with_the_limit_that_refused_it(live_server, model_dir: Path,
                                                                                   caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="workzone.access")
    srv = live_server(pipeline=str(write_pipeline(model_dir, "heldlog")), max_held_bytes=16 << 20)
    # A body still arriving: its bytes count against the budget as they arrive.
    hog = socket.create_connection(("127.0.0.1", srv.port))
    hog.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 19000000\r\n\r\n"
                + b"\0" * 15_000_000)
    flat = io.BytesIO()
    PILImage.new("RGB", (1000, 1000)).save(flat, "PNG")  # a 3-KB body, 2.9 MiB of pixels
    try:
        time.sleep(0.5)
        r = httpx.post(srv.url + "/v1/detect", content=flat.getvalue(), headers={"Content-Type": "image/png"},
                       timeout=10)  # its pixels and the 14.3 MiB held pass the 16 MiB
        assert r.status_code == 429, r.text
        assert "MiB" not in r.text  # the client is told a fixed sentence; the log has the reason
    finally:
        hog.close()
    (line,) = [x for x in _refusal_lines(caplog) if "429" in x]
    assert "refused 429 overloaded client=127.0.0.1 POST /v1/detect: the request's images need memory" in line, line
