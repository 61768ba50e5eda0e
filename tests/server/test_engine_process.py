"""The cascade in an engine process (workzone.cascade_process): same answers as in process, JPEGs decoded there,
tier events streamed back, concurrent batches merged, and a dead engine reported, never waited on."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from server_support import jpeg_bytes, write_pipeline
from workzone.accel.device_image import EncodedImage
from workzone.cascade import Cascade
from workzone.cascade_process import CascadeProcess, EngineStopped, _merged
from workzone.config.loader import load_pipeline_config
from workzone.errors import ConfigError, StageError
from workzone.io.images import decode_image


def _pipeline(model_dir: Path, name: str = "engine") -> tuple[object, Path]:
    config, path = load_pipeline_config(str(write_pipeline(model_dir, name)))
    return config, path.parent


def _images(n: int) -> list:
    return [decode_image(jpeg_bytes(64 + 8 * i, 48, seed=i), source=f"img{i}") for i in range(n)]


def test_engine_answers_as_the_cascade_in_process(model_dir: Path) -> None:
    config, base = _pipeline(model_dir)
    images = _images(5)

    async def main() -> tuple[list, list]:
        async with Cascade.from_config(config, base_dir=base) as local:
            expected = await local.run(images)
        engine = CascadeProcess(config, base)
        await engine.start(largest_batch=8)
        try:
            assert engine.ready and engine.pid != os.getpid()
            got = await engine.run(images)
        finally:
            await engine.aclose()
        assert not engine.ready
        return expected, got

    expected, got = asyncio.run(main())
    assert [d.source for d in got] == [f"img{i}" for i in range(5)]
    assert [d.probability for d in got] == pytest.approx([d.probability for d in expected], abs=1e-6)
    assert [d.exit_tier_name for d in got] == [d.exit_tier_name for d in expected]
    assert all(d.stages and d.stages[0].stage == "clf" for d in got)


def test_engine_decodes_deferred_jpegs_and_answers_a_broken_one_with_the_prior(model_dir: Path) -> None:
    config, base = _pipeline(model_dir)
    good = jpeg_bytes(80, 60, seed=3)

    async def main() -> list:
        engine = CascadeProcess(config, base)
        await engine.start(largest_batch=4)
        try:
            return await engine.run([EncodedImage(good, "good.jpg", (80, 60)),
                                     EncodedImage(b"\xff\xd8\xff not a jpeg", "broken.jpg", (10, 10)),
                                     decode_image(good, source="decoded")])
        finally:
            await engine.aclose()

    got = asyncio.run(main())
    assert [d.source for d in got] == ["good.jpg", "broken.jpg", "decoded"]
    # The same pixels, decoded in the engine or here, get the same answer.
    assert got[0].probability == pytest.approx(got[2].probability, abs=1e-6)
    assert got[1].degraded and "could not be decoded" in (got[1].degraded_reason or "")
    assert not got[0].degraded


def test_tier_events_come_back_with_the_callers_indices(model_dir: Path) -> None:
    config, base = _pipeline(model_dir)

    async def main() -> tuple[list, list, list]:
        engine = CascadeProcess(config, base)
        await engine.start(largest_batch=16)
        first, second = [], []
        try:
            # Two callers at once: the engine may merge them into one run, but each hears of its own images only.
            a, b = await asyncio.gather(engine.run(_images(3), on_event=first.append),
                                        engine.run(_images(2), on_event=second.append))
        finally:
            await engine.aclose()
        return first, second, a + b

    first, second, decisions = asyncio.run(main())
    assert sorted(e.index for e in first) == [0, 1, 2]
    assert sorted(e.index for e in second) == [0, 1]
    assert all(e.decided and e.tier_name == "fast" for e in first + second)
    assert len(decisions) == 5


def test_many_concurrent_callers_each_get_their_own_answers(model_dir: Path) -> None:
    config, base = _pipeline(model_dir)
    images = _images(6)

    async def main() -> list[list]:
        engine = CascadeProcess(config, base)
        await engine.start(largest_batch=8)
        try:
            return await asyncio.gather(*(engine.run(images[k % 6:k % 6 + 1 + k % 3]) for k in range(40)))
        finally:
            await engine.aclose()

    answers = asyncio.run(main())
    for k, got in enumerate(answers):
        want = [im.source for im in images[k % 6:k % 6 + 1 + k % 3]]
        assert [d.source for d in got] == want


def test_merging_keeps_order_the_warmed_batch_size_and_one_run_all_setting() -> None:
    runs = [("run", i, [None] * n, None, run_all, False)
            for i, (n, run_all) in enumerate([(3, False), (4, False), (2, False), (1, True), (5, False)])]
    groups = _merged(runs, largest=8)
    assert [[m[1] for m in g] for g in groups] == [[0, 1], [2], [3], [4]]
    assert all(sum(len(m[2]) for m in g) <= 8 for g in groups)
    assert [[m[1] for m in g] for g in _merged(runs[:3], largest=None)] == [[0, 1, 2]]


def test_a_killed_engine_fails_its_waiting_requests_and_reports_not_ready(model_dir: Path) -> None:
    config, base = _pipeline(model_dir)

    async def main() -> None:
        engine = CascadeProcess(config, base)
        await engine.start(largest_batch=4)
        os.kill(engine.pid, signal.SIGKILL)
        for _ in range(200):  # the reader notices the closed pipe
            if not engine.ready:
                break
            await asyncio.sleep(0.02)
        assert not engine.ready
        with pytest.raises(EngineStopped, match="exited"):
            await engine.run(_images(1))
        await engine.aclose()

    asyncio.run(main())


def test_a_pipeline_the_engine_cannot_load_fails_start_with_the_cause(tmp_path: Path) -> None:
    (tmp_path / "tiny.onnx").write_bytes(b"not an onnx model")
    config, base = _pipeline(tmp_path, "broken")

    async def main() -> None:
        engine = CascadeProcess(config, base)
        with pytest.raises(StageError, match="engine process could not load the pipeline"):
            await engine.start()
        assert not engine.ready

    asyncio.run(main())


def test_extras_that_cannot_cross_to_the_engine_are_a_config_error(model_dir: Path) -> None:
    config, base = _pipeline(model_dir)
    with pytest.raises(ConfigError, match="engine process cannot be given the stage extras"):
        CascadeProcess(config, base, extras={"client": threading.Lock()})


def test_the_server_with_an_engine_process_answers_as_without(model_dir: Path, live_server) -> None:
    pipeline = str(write_pipeline(model_dir, "served"))
    body = jpeg_bytes(96, 72, seed=7)
    answers = {}
    for engine in (False, True):
        srv = live_server(pipeline=pipeline, engine_process=engine)
        r = httpx.post(srv.url + "/v1/detect", content=body, headers={"content-type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200, r.text
        answers[engine] = r.json()["probability"]
        with httpx.stream("POST", srv.url + "/v1/detect/stream", content=body,
                          headers={"content-type": "image/jpeg"}, timeout=30) as s:
            text = "".join(s.iter_text())
        assert s.status_code == 200 and "fast" in text
        srv.stop()
    assert answers[True] == pytest.approx(answers[False], abs=1e-6)


def test_a_server_whose_engine_died_says_so_with_503s(model_dir: Path, live_server) -> None:
    srv = live_server(pipeline=str(write_pipeline(model_dir, "dies")), engine_process=True)
    body = jpeg_bytes(64, 48, seed=1)
    ok = httpx.post(srv.url + "/v1/detect", content=body, headers={"content-type": "image/jpeg"}, timeout=30)
    assert ok.status_code == 200
    os.kill(srv.app.state.service.cascade.pid, signal.SIGKILL)
    for _ in range(200):
        if httpx.get(srv.url + "/readyz", timeout=5).status_code == 503:
            break
        threading.Event().wait(0.02)
    assert httpx.get(srv.url + "/readyz", timeout=5).status_code == 503
    r = httpx.post(srv.url + "/v1/detect", content=body, headers={"content-type": "image/jpeg"}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["type"] == "backend_unavailable"


def test_the_engine_says_when_batches_wait_for_it(caplog: pytest.LogCaptureFixture) -> None:
    from workzone.cascade_process import _Stats

    stats = _Stats(every_s=0.0, slow_s=1.0)
    with caplog.at_level("WARNING", logger="workzone.engine"):
        stats.add(images=8, run_s=0.02, waited_s=0.1, inbox=0)  # kept up: nothing to say
        assert not caplog.records
        stats.add(images=64, run_s=0.05, waited_s=2.5, inbox=12)
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "64 images" in line and "2500 ms" in line and "deepest inbox 12" in line


def test_a_batch_is_charged_what_it_cost_the_engine_not_how_long_it_waited(model_dir: Path) -> None:
    config, base = _pipeline(model_dir)
    # Large images: the tiny classifier's resize makes their run long enough to be waited for.
    big = [decode_image(jpeg_bytes(2400, 1800, seed=k), source=f"big{k}") for k in range(24)]
    small = _images(1)

    async def main() -> tuple[float, float, float]:
        engine = CascadeProcess(config, base)
        await engine.start(largest_batch=64)
        try:
            first = asyncio.create_task(engine.run_timed(big))
            await asyncio.sleep(0.05)  # the big batch is running: the small one waits for it, then runs alone
            t = time.perf_counter()
            decisions, cost = await engine.run_timed(small)
            wall = time.perf_counter() - t
            _, big_cost = await first
        finally:
            await engine.aclose()
        assert len(decisions) == 1
        return cost, wall, big_cost

    cost, wall, big_cost = asyncio.run(main())
    assert 0 < cost < wall / 2, (cost, wall)
    assert big_cost > cost


def test_the_service_charges_clients_the_engines_time(model_dir: Path) -> None:
    from workzone.micro_batcher import BatchPolicy
    from workzone.service import DetectionService

    config, base = _pipeline(model_dir)
    big = [decode_image(jpeg_bytes(2400, 1800, seed=k), source=f"big{k}") for k in range(24)]
    charged: dict[str, float] = {}

    async def main() -> float:
        service = DetectionService.from_config(config, base, engine_process=True,
                                               policy=BatchPolicy(max_batch_size=32, max_wait_s=0.001, workers=2))
        original = service.client_costs.charge

        def record(clients, pixels, seconds):  # noqa: ANN001, ANN202 - the real charge, watched
            charged[clients[0]] = seconds
            return original(clients, pixels, seconds)

        service.client_costs.charge = record  # type: ignore[method-assign]
        await service.start()
        try:
            first = asyncio.create_task(service.detect_many(big, client="big"))
            await asyncio.sleep(0.05)  # a second batch worker sends the small image while the big batch runs
            t = time.perf_counter()
            await service.detect_many(_images(1), client="small")
            wall = time.perf_counter() - t
            await first
        finally:
            await service.aclose()
        return wall

    wall = asyncio.run(main())
    assert 0 < charged["small"] < wall / 2, (charged, wall)
    assert charged["big"] > charged["small"]
