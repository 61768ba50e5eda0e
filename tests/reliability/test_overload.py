"""Under overload (issue 20, its last acceptance item): refusals decided from the headers, refused
connections closed without a reset, no work started that cannot finish by its deadline, and an event
loop that neither a decoder process nor the garbage collector can stall."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from server_support import jpeg_bytes, slow_first_tier, write_pipeline


def test_a_body_refused_before_it_is_read_is_answered_not_reset(live_server, model_dir: Path):
    # 413 is sent from the declared length, before the body is read; the client goes on sending it.
    # Closed at once, the server's kernel would answer those bytes with a reset, which can destroy
    # the 413 before the client reads it: a dropped connection instead of an answer.
    srv = live_server(pipeline=str(write_pipeline(model_dir, "linger")), max_body_bytes=1 << 20)
    body = b"\xff" * (3 << 20)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: image/jpeg\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode())
        s.sendall(body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]


def test_bodies_admitted_moments_ago_count_as_upcoming_work():
    from workzone.server.admission import Admission

    admission = Admission(max_inflight=8, max_held_bytes=1 << 20)
    first, second = admission.begin_upload("10.0.0.1"), admission.begin_upload("10.0.0.2")
    assert admission.upcoming() == 2
    admission.end_upload("10.0.0.1", first)  # its body arrived: now in-flight work, not upcoming
    assert admission.upcoming() == 1 and admission.uploads == {"10.0.0.2": 1}
    admission.end_upload("10.0.0.2", second)
    assert admission.upcoming() == 0 and admission.uploads == {}


def test_work_that_cannot_finish_by_its_deadline_is_answered_before_it_starts(live_server, model_dir: Path):
    p = write_pipeline(model_dir, "dropped", first_tier=slow_first_tier(0.3), deadline_s=30)
    srv = live_server(pipeline=str(p))
    service = srv.app.state.service
    service.seconds_per_image = 5.0  # as measured on a saturated server: a 1-s deadline cannot be met
    t = time.perf_counter()
    r = httpx.post(srv.url + "/v1/detect", content=jpeg_bytes(), timeout=10,
                   headers={"Content-Type": "image/jpeg", "X-Deadline-S": "1"})
    elapsed = time.perf_counter() - t
    d = r.json()
    assert r.status_code == 200 and d["degraded"] is True and d["stages"] == []
    assert "dropped before it started" in d["degraded_reason"]
    assert elapsed < 0.3  # not run: the slow tier alone takes 0.3 s
    # A deadline the estimate fits is run as usual.
    service.seconds_per_image = 0.5
    d = httpx.post(srv.url + "/v1/detect", content=jpeg_bytes(), timeout=10,
                   headers={"Content-Type": "image/jpeg", "X-Deadline-S": "10"}).json()
    assert d["degraded"] is False and [s["stage"] for s in d["stages"]] == ["clf", "wait"]


def test_a_decoder_that_sent_half_its_pixels_does_not_stop_the_event_loop():
    from workzone.io.decode_pool import _Worker

    px = np.arange(600 * 800 * 3, dtype=np.uint8).reshape(600, 800, 3)
    raw = px.tobytes()
    parent, child = socket.socketpair()
    parent.setblocking(False)
    worker = _Worker.__new__(_Worker)  # the parent's end only; this test plays the decoder process
    worker.sock = parent
    import pickle

    head = pickle.dumps(("image", px.shape, (800, 600)))
    release = threading.Event()

    def decoder() -> None:  # a decoder preempted halfway through writing its pixels
        child.sendall(struct.pack("!i", len(head)) + head + struct.pack("!i", len(raw)) + raw[:len(raw) // 2])
        release.wait(5)
        child.sendall(raw[len(raw) // 2:])

    async def go() -> tuple[tuple, int]:
        threading.Thread(target=decoder, daemon=True).start()
        reading = asyncio.ensure_future(worker.receive())
        ticks = 0
        for _ in range(20):  # the loop keeps turning while the reply is half there
            await asyncio.sleep(0.01)
            ticks += 1
        assert not reading.done()
        release.set()
        return await asyncio.wait_for(reading, 5), ticks

    try:
        reply, ticks = asyncio.run(go())
    finally:
        parent.close()
        child.close()
    assert ticks == 20 and reply[0] == "image" and np.array_equal(reply[1], px) and reply[2] == (800, 600)


def test_loaded_objects_are_frozen_out_of_the_collector():
    import weakref

    from workzone._memory import freeze_loaded_objects

    class Node:
        pass

    # A reference cycle alive at freeze time stands for the loaded pipeline: after the freeze a full
    # collection must not free it even once nothing outside refers to it. (Counting the frozen objects
    # before and after is not a test: objects in the permanent generation still die by refcount, so
    # the count drifts with whatever other threads free.)
    cycle = Node()
    cycle.self = cycle
    alive = weakref.ref(cycle)
    try:
        frozen = freeze_loaded_objects()
        assert frozen > 1000 and gc.get_freeze_count() >= frozen - 100
        del cycle
        gc.collect()
        assert alive() is not None, "a full collection freed an object frozen at load"
    finally:
        gc.unfreeze()
    gc.collect()
    assert alive() is None  # unfrozen, the same cycle is garbage again: the freeze was what kept it


def test_the_stages_and_decoders_run_below_the_event_loops_priority(live_server, model_dir: Path):
    import os

    srv = live_server(pipeline=str(write_pipeline(model_dir, "nice")), compute_nice=5)
    r = httpx.post(srv.url + "/v1/detect", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert r.status_code == 200
    assert "app;dur=" in r.headers["server-timing"]  # the server's own time, apart from the network's
    loop = srv.server._workzone_loop

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def in_executor() -> int:
        return await asyncio.to_thread(nice)

    base = os.getpriority(os.PRIO_PROCESS, srv.thread.native_id)  # the event loop's thread
    assert asyncio.run_coroutine_threadsafe(in_executor(), loop).result(10) == min(19, base + 5)
    # The decoder processes were started from those threads: they inherit the lower priority too.
    pool = srv.app.state.service.decoder.processes
    assert all(os.getpriority(os.PRIO_PROCESS, w.proc.pid) >= min(19, base + 5) for w in pool._all)


def _post(srv, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(srv.url + "/v1/detect", content=body, headers={"Content-Type": "image/jpeg", **headers},
                      timeout=30)


def test_past_the_resident_memory_ceiling_new_work_waits_for_the_work_held(live_server, model_dir: Path, caplog):
    import logging

    from server_support import metric_value

    # This process holds more than 64 MiB (its models, the test run): the ceiling is passed from the start.
    srv = live_server(pipeline=str(write_pipeline(model_dir, "ceiling")), max_held_bytes=32 << 20,
                      max_rss_bytes=64 << 20)
    metrics = srv.metrics()
    assert metric_value(metrics, "workzone_resident_ceiling_bytes") == 64 << 20
    assert metric_value(metrics, "workzone_resident_bytes") > 64 << 20
    body = jpeg_bytes()
    # Alone, a request is admitted however much the process holds: refusing it would free nothing.
    assert _post(srv, body).status_code == 200
    admission = srv.app.state.admission
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: image/jpeg\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
        end = time.monotonic() + 10
        while admission.held_bytes == 0 and time.monotonic() < end:  # its first bytes are held
            time.sleep(0.01)
        assert admission.held_bytes > 0
        with caplog.at_level(logging.WARNING, logger="workzone.access"):
            refused = _post(srv, body)
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "overloaded"
        assert any("WORKZONE_MAX_RSS_BYTES" in rec.getMessage() for rec in caplog.records)
        # The held request's own bytes do not count against it: once whole, it is served.
        s.sendall(body[100:])
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]



def test_the_default_ceiling_is_the_loaded_size_plus_the_byte_budget(live_server, model_dir: Path):
    from server_support import metric_value

    # Counted once, not twice: admitted work overshoots the ceiling by up to the budget again.
    for budget, headroom in ((512 << 20, 512 << 20), (32 << 20, 256 << 20)):  # at least 256 MiB of headroom
        srv = live_server(pipeline=str(write_pipeline(model_dir, f"auto{budget}")), max_held_bytes=budget)
        end = time.monotonic() + 30
        ceiling = 0
        while not ceiling and time.monotonic() < end:  # settled once the pipeline has loaded
            ceiling = metric_value(srv.metrics(), "workzone_resident_ceiling_bytes")
            time.sleep(0.1)
        resident = metric_value(srv.metrics(), "workzone_resident_bytes")
        # the loaded size was read before: it is at most what the process holds now, and not far below it
        assert resident - (64 << 20) < ceiling - headroom <= resident + (8 << 20), (ceiling, resident, headroom)

def test_the_ceiling_trims_past_its_mark_and_says_when_it_is_passed():
    from workzone._memory import MemoryCeiling, resident_bytes

    rss = resident_bytes()
    assert rss is not None and rss > 8 << 20
    far = MemoryCeiling(rss + (1 << 30), headroom_bytes=256 << 20)
    assert far.passed() is None and far.trims == 0  # far below its mark: not even a trim
    low = MemoryCeiling(1 << 20)  # this process holds far more
    assert low.passed() is not None and low.trims == 1  # a trim started (in a thread of its own)
    assert low.passed() is not None and low.trims == 1  # no second trim within a quarter of the trimmer's second
    off = MemoryCeiling(0)
    assert off.passed() is None and off.trim_bytes == 0 and off.trims == 0
    auto = MemoryCeiling(None)
    assert auto.passed() is None  # unknown until the pipeline has loaded
    limit = auto.settle(512 << 20)
    assert limit is not None and abs(limit - (rss + (512 << 20))) < 256 << 20
    assert auto.settle(1) == limit  # settled once


def test_trims_are_done_by_one_thread_woken_not_started_each_time():
    # Starting a thread waits until it runs: on loaded cores, the event loop (which asks for the
    # trims) waited with it. One trimmer thread is woken for every trim of a busy spell.
    from workzone._memory import MemoryCeiling, Trimmer

    low = MemoryCeiling(1 << 20, every_s=0.0, trimmer=Trimmer(every_s=0.0))
    trimmers = set()
    for _ in range(4):
        assert low.passed() is not None
        end = time.monotonic() + 10
        while low._trimming and time.monotonic() < end:
            time.sleep(0.005)
        assert not low._trimming
        trimmers.add(low.trimmer._thread)
    assert low.trims == 4 and len(trimmers) == 1 and None not in trimmers


def test_the_services_trims_share_the_woken_thread_and_each_waiter_is_told():
    # The queue-empty trims (Trimmer.maybe_trim(in_thread=True)) go to the same woken thread as the
    # ceiling's; a caller's follow-up runs after its trim, in that thread.
    from workzone._memory import Trimmer

    trimmer = Trimmer(every_s=0.0)
    done: list[str] = []
    threads = set()
    for _ in range(3):
        assert trimmer.maybe_trim(in_thread=True)
        trimmer.trim_in_thread(then=lambda: done.append(threading.current_thread().name))
        threads.add(trimmer._thread)
        end = time.monotonic() + 10
        while len(done) < len(threads) and time.monotonic() < end:
            time.sleep(0.005)
    assert len(threads) == 1 and None not in threads
    assert done and set(done) == {"workzone-trim"}


@pytest.mark.parametrize(("env", "field"), [
    ({"WORKZONE_MAX_RSS_BYTES": "1000000"}, "max_rss_bytes"),  # below the byte budget it must hold
    ({"WORKZONE_MAX_RSS_BYTES": "-1"}, "max_rss_bytes"),
    ({"WORKZONE_MAX_RSS_BYTES": "a lot"}, "max_rss_bytes"),
    ({"WORKZONE_MALLOC_MMAP_THRESHOLD": "4096"}, "malloc_mmap_threshold"),  # a system call per small block
    ({"WORKZONE_MALLOC_MMAP_THRESHOLD": str(64 << 20)}, "malloc_mmap_threshold"),  # glibc's most is 32 MiB
])
def test_memory_settings_out_of_range_are_config_errors(monkeypatch, env: dict[str, str], field: str):
    from workzone.cli.serve import _settings
    from workzone.errors import ConfigError
    from workzone.server.settings import ServerSettings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=field):
        _settings(ServerSettings, {})


def test_memory_settings_in_range_are_taken(monkeypatch):
    from workzone.server.settings import ServerSettings

    monkeypatch.setenv("WORKZONE_MAX_RSS_BYTES", str(1 << 30))
    monkeypatch.setenv("WORKZONE_MALLOC_MMAP_THRESHOLD", str(128 << 10))
    s = ServerSettings()
    assert (s.max_rss_bytes, s.malloc_mmap_threshold) == (1 << 30, 128 << 10)
    assert ServerSettings(max_rss_bytes=0).max_rss_bytes == 0  # no ceiling



def test_the_automatic_ceiling_is_the_cpus_and_a_set_one_holds_on_any_device():
    from workzone.server.app import default_rss_ceiling
    from workzone.server.settings import ServerSettings

    assert default_rss_ceiling(ServerSettings(device="cpu")) is None  # settled from the loaded pipeline
    assert default_rss_ceiling(ServerSettings(device="cuda")) == 0  # none: CUDA grows RSS after loading
    assert default_rss_ceiling(ServerSettings(device="cuda:1")) == 0
    assert default_rss_ceiling(ServerSettings(device="cuda", max_rss_bytes=3 << 30)) == 3 << 30
    assert default_rss_ceiling(ServerSettings(device="cpu", max_rss_bytes=0)) == 0

def test_each_answer_times_itself_from_the_accept_and_from_its_first_bytes(live_server, model_dir: Path):
    from server_support import metric_value
    from tests.reliability.fuzz import _server_timing

    srv = live_server(pipeline=str(write_pipeline(model_dir, "timing")))
    r = _post(srv, jpeg_bytes())  # a fresh connection: its first request
    head = "\r\n".join(f"{k}: {v}" for k, v in r.headers.items()).encode()
    app, read, accept = (_server_timing(head, name) for name in (b"app", b"read", b"accept"))
    assert r.status_code == 200 and None not in (app, read, accept)
    assert accept >= read >= app > 0  # type: ignore[operator]
    time.sleep(0.3)  # the event loop's lag is probed every 50 ms
    assert metric_value(srv.metrics(), "workzone_event_loop_lag_seconds_count") >= 3


def _raw_refused(port: int, body: bytes, sent: int, extra: bytes = b"") -> tuple[bytes, int]:
    """Send a detect request's headers and ``sent`` bytes of ``body``, then the rest while reading the
    answer until the server's end of file; returns the answer and how many body bytes were sent.
    A reset (the server closing with body bytes unread) raises ConnectionResetError."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: image/jpeg\r\n" + extra
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:sent])
        answer, at = b"", sent
        s.setblocking(False)
        while True:
            if at < len(body):  # the client goes on sending its body, as a real one does
                try:
                    at += s.send(body[at:at + 65536])
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    at = len(body)  # the server shut its side after the answer: stop sending
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            if not chunk:
                return answer, at
            answer += chunk


def _head_and_body(answer: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, body


def test_a_refusal_from_the_headers_is_answered_by_the_protocol_not_reset(live_server, model_dir: Path, caplog):
    # Refused in the callback that parsed the headers (no ASGI task): the documented 429 with
    # Retry-After, Connection: close and the server's own time, while the client still sends its
    # 3-MB body; the connection then closes without a reset (the rest is read and discarded).
    import json
    import logging

    from server_support import metric_value

    caplog.set_level(logging.WARNING, logger="workzone.access")
    srv = live_server(pipeline=str(write_pipeline(model_dir, "early")), refusal_log_per_s=100)
    srv.app.state.admission.max_inflight = 0  # every detect request is refused from its headers
    body = b"\xff" * (3 << 20)
    answer, _ = _raw_refused(srv.port, body, 4096)
    status, fields, text = _head_and_body(answer)
    assert status == 429 and fields[b"retry-after"] == b"1" and fields[b"connection"] == b"close"
    assert fields[b"content-type"] == b"application/json" and int(fields[b"content-length"]) == len(text)
    assert json.loads(text) == {"error": {"type": "overloaded", "status": 429,
                                          "message": "the server is at capacity; retry after the Retry-After delay"}}
    timing = fields[b"server-timing"]
    assert b"read;dur=" in timing and b"accept;dur=" in timing and b"app;" not in timing  # no app ran
    assert any("refused 429 overloaded client=127.0.0.1 POST /v1/detect: before the body (at the protocol layer)"
               in r.getMessage() for r in caplog.records if r.name == "workzone.access")
    assert metric_value(srv.metrics(), "workzone_requests_total", {"endpoint": "/v1/detect", "status": "429"}) == 1
    # The server goes on: admitted again, the same connection type is served.
    srv.app.state.admission.max_inflight = 8
    assert _post(srv, jpeg_bytes()).status_code == 200


def test_the_protocol_layers_refusal_is_the_apps_refusal(live_server, model_dir: Path):
    # A request with Origin is left to the ASGI stack (CORS headers are its business): both answers
    # carry the same status, error body and Retry-After, whether the body arrived whole or not.
    srv = live_server(pipeline=str(write_pipeline(model_dir, "same")))
    srv.app.state.admission.max_inflight = 0
    for body, sent in ((jpeg_bytes(), None), (b"\0" * (1 << 20), 1000)):
        sent = len(body) if sent is None else sent
        early = _head_and_body(_raw_refused(srv.port, body, sent)[0])
        late = _head_and_body(_raw_refused(srv.port, body, sent, b"Origin: http://example.test\r\n")[0])
        assert early[0] == late[0] == 429 and early[2] == late[2]
        assert early[1][b"retry-after"] == late[1][b"retry-after"] == b"1"
        assert b"app;" not in early[1][b"server-timing"] and b"app;dur=" in late[1][b"server-timing"]
    # Not ready: 503 from the protocol too, on a keep-alive client (it reconnects after Connection: close).
    srv.app.state.admission.max_inflight = 8
    srv.app.state.service.state = "starting"
    with httpx.Client(timeout=10) as client:
        rs = [client.post(srv.url + "/v1/detect", content=b"x", headers={"Content-Type": "image/jpeg"})
              for _ in range(3)]
    assert [r.status_code for r in rs] == [503] * 3 and all(r.json()["error"]["type"] == "not_ready" for r in rs)
    assert all(r.headers["retry-after"] == "1" and "app;" not in r.headers["server-timing"] for r in rs)


def test_the_callback_client_measures_what_the_stream_client_measures(live_server, model_dir: Path):
    # The overload section's lighter load generator: the same request, the same outcomes (an answer,
    # a refusal, a connection closed without a status line), the same clock (connect within it).
    from tests.reliability.fuzz import HttpRequest, raw_request, raw_request_in_callbacks

    srv = live_server(pipeline=str(write_pipeline(model_dir, "clients")))
    req = HttpRequest("/v1/detect", "image/jpeg", jpeg_bytes())
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)

    def close_unanswered() -> None:
        for _ in range(2):
            conn, _ = mute.accept()
            conn.recv(65536)
            conn.close()

    threading.Thread(target=close_unanswered, daemon=True).start()

    async def both(port: int) -> list[Any]:
        return [await send("127.0.0.1", port, req, 10, "127.0.1.7") for send in (raw_request, raw_request_in_callbacks)]

    ok = asyncio.run(both(srv.port))
    srv.app.state.admission.max_inflight = 0
    refused = asyncio.run(both(srv.port))
    dropped = asyncio.run(both(mute.getsockname()[1]))
    mute.close()
    assert [r.status for r in ok] == [200, 200] and all(b'"probability"' in r.body for r in ok)
    assert [r.status for r in refused] == [429, 429] and refused[0].body == refused[1].body
    assert [r.status for r in dropped] == [None, None]
    assert all(0 < r.connect_s <= r.latency_s and r.read_s is not None for r in ok + refused)


def test_requests_let_through_at_the_protocol_layer_count_as_upcoming_work(live_server, model_dir: Path):
    # The headers of a burst are parsed in one loop turn, before any of their ASGI tasks runs: each
    # request the protocol layer lets through counts as upcoming work at once, so the burst is refused
    # there, from its headers, not one by one by the middleware a loop turn later.
    from workzone.server.admission import HeaderRefusal

    srv = live_server(pipeline=str(write_pipeline(model_dir, "burst")))
    service, admission = srv.app.state.service, srv.app.state.admission
    service.seconds_per_image = 1.0  # each request admitted adds 1 s / workers to the wait
    workers = service.batcher.policy.workers
    refusal = HeaderRefusal(service, admission)
    answers = [refusal({"type": "http", "method": "POST", "path": "/v1/detect", "client": ("127.0.0.1", 5),
                        "headers": [(b"x-deadline-s", b"2")]}) for _ in range(workers + 6)]
    # A 2-s deadline leaves 1 s of queueing: the first workers + 1 pass, the rest wait too long.
    assert [a is None for a in answers] == [True] * (workers + 1) + [False] * 5
    assert {a[0] for a in answers if a is not None} == {429}
    assert admission.upcoming() == workers + 1


def test_freed_memory_is_given_back_off_the_event_loop(model_dir: Path, monkeypatch):
    """When the queue runs empty the service trims the heap: in a thread of its own, as a trim of a process
    running the torch detector stopped the loop for up to 123 ms (benchmarks/results/http_cold_shapes_cpu.md)."""
    import workzone._memory as memory
    from workzone.service import DetectionService

    ran_on: list[str] = []
    trim = memory.release_free_memory

    def recorded() -> bool:
        ran_on.append(threading.current_thread().name)
        return trim()

    monkeypatch.setattr(memory, "release_free_memory", recorded)

    async def go() -> str:
        svc = DetectionService.from_pipeline(write_pipeline(model_dir, "trims"))
        await svc.start()
        try:
            image = svc.decoder.decode([jpeg_bytes()])[0]
            await svc.detect(image)
            for _ in range(100):  # the thread has started; it runs the trim at once
                if ran_on:
                    break
                await asyncio.sleep(0.01)
        finally:
            await svc.aclose()
        return threading.current_thread().name

    loop_thread = asyncio.run(go())
    assert ran_on and loop_thread not in ran_on, ran_on
