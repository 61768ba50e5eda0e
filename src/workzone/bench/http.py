"""HTTP latency under open-loop load: ``workzone serve`` in a child process, a loopback load generator.

Requests are sent on a fixed schedule (``rate`` per second, not waiting for answers), so a slow
server shows up as latency, not as a lower offered rate. Latency runs from the scheduled send time
to the end of the response. The percentiles that matter for the subnet are those of images that
exit at tier 1, reported apart from the rest.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np

from workzone.bench.runs import Row
from workzone.errors import WorkzoneError

__all__ = ["http_latency"]


def http_latency(blobs: list[bytes], size: str, *, pipeline: str, device: str, rate: float, seconds: float,
                 batch_size: int = 64, batch_wait_ms: float = 2.0, start_timeout_s: float = 240.0) -> Row:
    """Serve ``pipeline`` on loopback and time ``rate`` requests/s of ``blobs`` for ``seconds``.

    Raises:
        WorkzoneError: the server did not become ready within ``start_timeout_s``.
    """
    httpx = __import__("httpx")
    port = _free_port()
    cmd = [sys.executable, "-m", "workzone.cli.main", "serve", "--pipeline", pipeline, "--device", device,
           "--port", str(port), "--batch-size", str(batch_size), "--batch-wait-ms", str(batch_wait_ms),
           "--queue-size", str(max(256, int(rate * 2))), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(httpx, base, proc, start_timeout_s)
        lat, tiers, errors, sent_s = asyncio.run(_load(httpx, base, blobs, rate, seconds))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat_a, tier_a = np.array(lat), np.array(tiers)
    t1 = lat_a[tier_a == 0] if len(lat_a) else lat_a
    pct = {"p50_ms": 50, "p95_ms": 95, "p99_ms": 99}
    stages = {"tier-1 exits": {k: float(np.percentile(t1, q)) for k, q in pct.items()} | {"n": float(len(t1))}}
    if len(lat_a):
        stages["all requests"] = {k: float(np.percentile(lat_a, q)) for k, q in pct.items()} | {"n": float(len(lat_a))}
    return Row(f"HTTP /v1/detect at {rate:.0f} req/s (open loop, loopback)", device, size, 1, len(lat), sent_s,
               float(np.percentile(lat_a, 50)) if len(lat_a) else float("nan"),
               float(np.percentile(lat_a, 95)) if len(lat_a) else float("nan"), stages=stages,
               notes=f"{errors} errors; server batch {batch_size}, wait {batch_wait_ms} ms; images/s = answered/s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(httpx: Any, base: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
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
