"""HTTP latency under open-loop load: ``workzone serve`` in a child process, a loopback load generator.

Requests are sent on a fixed schedule (``rate`` per second, not waiting for answers), so a slow
server shows up as latency, not as a lower offered rate. Latency runs from the scheduled send time
to the end of the response. The percentiles that matter for the subnet are those of images that
exit at tier 1, reported apart from the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator, Sequence

import numpy as np

from workzone.throughput.runs import Row
from workzone.errors import WorkzoneError

__all__ = ["http_latency", "http_sweep", "served"]


@contextlib.contextmanager
def served(pipeline: str, device: str, *, batch_size: int = 64, batch_wait_ms: float = 2.0, queue_size: int = 4096,
           start_timeout_s: float = 240.0, probe: bytes | None = None) -> Iterator[str]:
    """``workzone serve`` in a child process on a free loopback port; yields its base URL once it is ready.

    Ready means: ``/readyz`` answered 200 and, with ``probe``, one ``/v1/detect`` of it answered 200 with a
    probability (a server that started but cannot decide is not timed).

    Raises:
        WorkzoneError: the server exited (its stderr is quoted), was not ready in time, or failed the probe.
    """
    httpx = __import__("httpx")
    port = _free_port()
    cmd = [sys.executable, "-m", "workzone.cli.main", "serve", "--pipeline", pipeline, "--device", device,
           "--port", str(port), "--batch-size", str(batch_size), "--batch-wait-ms", str(batch_wait_ms),
           "--queue-size", str(queue_size), "--log-level", "warning"]
    # stderr to a file, not a pipe: a server that logs under load would block on a full pipe.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(httpx, base, proc, start_timeout_s, log)
        if probe is not None:
            r = httpx.post(f"{base}/v1/detect", content=probe, headers={"content-type": "image/jpeg"}, timeout=60.0)
            body = r.json() if r.status_code == 200 else {}
            if r.status_code != 200 or not isinstance(body.get("probability"), float):
                raise WorkzoneError(f"workzone serve started but answered a probe with {r.status_code}: {r.text[:300]}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def http_latency(blobs: list[bytes], size: str, *, pipeline: str, device: str, rate: float, seconds: float,
                 batch_size: int = 64, batch_wait_ms: float = 2.0, start_timeout_s: float = 240.0) -> Row:
    """Serve ``pipeline`` on loopback and time ``rate`` requests/s of ``blobs`` for ``seconds``.

    Raises:
        WorkzoneError: the server did not become ready within ``start_timeout_s``.
    """
    with served(pipeline, device, batch_size=batch_size, batch_wait_ms=batch_wait_ms,
                queue_size=max(256, int(rate * 2)), start_timeout_s=start_timeout_s, probe=blobs[0]) as base:
        return _timed(base, blobs, size, device, rate, seconds, batch_size, batch_wait_ms)


def http_sweep(blobs: list[bytes], size: str, *, pipeline: str, device: str, rates: Sequence[float], seconds: float,
               p99_limit_ms: float = 100.0, search_seconds: float = 5.0, max_rate: float = 20000.0,
               batch_size: int = 64, batch_wait_ms: float = 2.0, start_timeout_s: float = 240.0) -> list[Row]:
    """One server, timed at each of ``rates``, then the highest rate whose p99 stays within ``p99_limit_ms``.

    The search doubles past the last rate that held (up to ``max_rate``), then bisects three times between
    the best that held and the first that did not, ``search_seconds`` each; its rows say "search".
    """
    rows: list[Row] = []
    with served(pipeline, device, batch_size=batch_size, batch_wait_ms=batch_wait_ms,
                queue_size=max(1024, int(max(rates) * 2)), start_timeout_s=start_timeout_s, probe=blobs[0]) as base:
        for rate in rates:
            rows.append(_timed(base, blobs, size, device, rate, seconds, batch_size, batch_wait_ms))

        def holds(row: Row) -> bool:
            answered = row.stages.get("all requests", {})
            return answered.get("p99_ms", float("inf")) <= p99_limit_ms and answered.get("errors", 1.0) == 0

        good = max((r for r in rows if holds(r)), key=lambda r: r.images / max(r.seconds, 1e-9), default=None)
        lo = max((rate for rate, r in zip(rates, rows) if holds(r)), default=0.0)
        hi = min((rate for rate, r in zip(rates, rows) if not holds(r) and rate > lo), default=None)
        steps = 0
        while hi is None and lo and lo * 2 <= max_rate and steps < 3:
            row = _timed(base, blobs, size, device, lo * 2, search_seconds, batch_size, batch_wait_ms, search=True)
            rows.append(row)
            steps += 1
            if holds(row):
                lo, good = lo * 2, row
            else:
                hi = lo * 2
        for _ in range(3 if hi is not None else 0):
            mid = (lo + hi) / 2 if lo else hi / 2
            row = _timed(base, blobs, size, device, mid, search_seconds, batch_size, batch_wait_ms, search=True)
            rows.append(row)
            if holds(row):
                lo, good = mid, row
            else:
                hi = mid
        best = good.stages["all requests"]["p99_ms"] if good is not None else float("nan")
        rows.append(Row(f"HTTP highest rate held with p99 <= {p99_limit_ms:.0f} ms", device, size, 1,
                        int(round(lo)), 1.0, float("nan"), float("nan"),
                        notes=(f"{lo:.0f} requests/s offered, p99 {best:.1f} ms (rates tried: "
                               + ", ".join(f"{r.name.split(' at ')[1].split(' req')[0]}" for r in rows) + ")")
                        if lo else "no rate tried held"))
    return rows


def _timed(base: str, blobs: list[bytes], size: str, device: str, rate: float, seconds: float, batch_size: int,
           batch_wait_ms: float, *, search: bool = False) -> Row:
    httpx = __import__("httpx")
    lat, tiers, errors, sent_s = asyncio.run(_load(httpx, base, blobs, rate, seconds))
    lat_a, tier_a = np.array(lat), np.array(tiers)
    t1 = lat_a[tier_a == 0] if len(lat_a) else lat_a
    pct = {"p50_ms": 50, "p95_ms": 95, "p99_ms": 99}
    stages = {"tier-1 exits": {k: float(np.percentile(t1, q)) for k, q in pct.items()} | {"n": float(len(t1))}} if len(t1) else {}
    if len(lat_a):
        stages["all requests"] = ({k: float(np.percentile(lat_a, q)) for k, q in pct.items()}
                                  | {"n": float(len(lat_a)), "errors": float(errors)})
    p99 = f"p99 {np.percentile(lat_a, 99):.1f} ms; " if len(lat_a) else ""
    return Row(f"HTTP /v1/detect at {rate:.0f} req/s (open loop, loopback{', search' if search else ''})", device,
               size, 1, len(lat), sent_s,
               float(np.percentile(lat_a, 50)) if len(lat_a) else float("nan"),
               float(np.percentile(lat_a, 95)) if len(lat_a) else float("nan"), stages=stages,
               notes=f"{p99}{errors} errors; server batch {batch_size}, wait {batch_wait_ms} ms; "
                     "images/s = answered/s; batch p50/p95 = request latency")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(httpx: Any, base: str, proc: subprocess.Popen, timeout: float, log: Any) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace")[-2000:]
            raise WorkzoneError(f"workzone serve exited with {proc.returncode}: {err}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise WorkzoneError(f"workzone serve was not ready within {timeout:.0f} s")


async def _load(httpx: Any, base: str, blobs: list[bytes], rate: float, seconds: float
                ) -> tuple[list[float], list[int], int, float]:
    try:
        import aiohttp  # lighter per request than httpx, so the generator's own cost stays out of the latency
    except ImportError:
        aiohttp = None
    lat: list[float] = []
    tiers: list[int] = []
    errors = 0
    headers = {"content-type": "image/jpeg"}
    if aiohttp is not None:
        session: Any = aiohttp.ClientSession(base_url=base, connector=aiohttp.TCPConnector(limit=2000),
                                             timeout=aiohttp.ClientTimeout(total=30))

        async def post(i: int) -> tuple[int, Any]:
            async with session.post("/v1/detect", data=blobs[i % len(blobs)], headers=headers) as r:
                return r.status, (await r.json() if r.status == 200 else None)
    else:
        session = httpx.AsyncClient(base_url=base, timeout=30.0,
                                    limits=httpx.Limits(max_connections=2000, max_keepalive_connections=2000))

        async def post(i: int) -> tuple[int, Any]:
            r = await session.post("/v1/detect", content=blobs[i % len(blobs)], headers=headers)
            return r.status_code, (r.json() if r.status_code == 200 else None)

    async with session:
        # Warm the connection pool and the server's batches before the timed window.
        await asyncio.gather(*(post(i) for i in range(64)), return_exceptions=True)

        async def one(i: int, due: float) -> None:
            nonlocal errors
            try:
                status, body = await post(i)
            except Exception:  # noqa: BLE001 - any transport failure counts as an error
                errors += 1
                return
            done = time.perf_counter()
            if status != 200:
                errors += 1
                return
            lat.append((done - due) * 1000.0)
            tiers.append(int(body.get("exit_tier", -1)))

        n = int(rate * seconds)
        t0 = time.perf_counter()
        tasks = []
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        sent_s = time.perf_counter() - t0
        await asyncio.gather(*tasks)
    return lat, tiers, errors, max(sent_s, 1e-9)
