"""HTTP latency under open-loop load: ``workzone serve`` in a child process, a loopback load generator.

Requests are sent on a fixed schedule (``rate`` per second, not waiting for answers), so a slow
server shows up as latency, not as a lower offered rate. Latency runs from the scheduled send time
to the end of the response. The percentiles that matter for the subnet are those of images that
exit at tier 1, reported apart from the rest.

Every answer that is not a 200 is counted by what it was (each status, its error type, transport
errors by exception), and the server's own refusal log says which limit refused (in-flight, queue,
memory, the per-client upload limit, ...): a row that went wrong says why.

The load comes from ``addresses`` loopback source addresses (127.0.0.1, 127.0.0.2, ...; Linux routes
all of 127.0.0.0/8 to loopback), requests dealt round-robin: a deployment is called by many
validators and clients, and the server's per-client defences (the upload limit, the refusal penalty)
count by address. ``addresses=1`` measures one client alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterator, Sequence

import numpy as np

from workzone.throughput.runs import Row
from workzone.errors import WorkzoneError

__all__ = ["http_latency", "http_sweep", "served", "Served", "DEFAULT_ADDRESSES"]

#: Loopback source addresses the load comes from unless told otherwise (see the module docstring).
DEFAULT_ADDRESSES = 64


@contextlib.contextmanager
def served(pipeline: str, device: str, *, batch_size: int = 64, batch_wait_ms: float = 2.0, queue_size: int = 4096,
           start_timeout_s: float = 240.0, probe: bytes | None = None,
           log_path: str | os.PathLike[str] | None = None) -> Iterator["Served"]:
    """``workzone serve`` in a child process on a free loopback port; yields it once it is ready.

    Ready means: ``/readyz`` answered 200 and, with ``probe``, one ``/v1/detect`` of it answered 200 with a
    probability (a server that started but cannot decide is not timed). The server's log (stderr) is
    kept in ``log_path`` when given (a row that went wrong can then be read line by line).

    Raises:
        WorkzoneError: the server exited (its stderr is quoted), was not ready in time, or failed the probe.
    """
    httpx = __import__("httpx")
    port = _free_port()
    cmd = [sys.executable, "-m", "workzone.cli.main", "serve", "--pipeline", pipeline, "--device", device,
           "--port", str(port), "--batch-size", str(batch_size), "--batch-wait-ms", str(batch_wait_ms),
           "--queue-size", str(queue_size), "--log-level", "warning"]
    # stderr to a file, not a pipe: a server that logs under load would block on a full pipe.
    log = tempfile.TemporaryFile() if log_path is None else open(log_path, "w+b")  # noqa: SIM115 - closed below
    # Every refusal logged (not 2 a second), so that the rows can say which limit refused.
    env = {"WORKZONE_REFUSAL_LOG_PER_S": str(_REFUSAL_LOG_PER_S)} | dict(os.environ)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    workers = int(os.environ.get("WORKZONE_HTTP_WORKERS", "1") or 1)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(httpx, base, proc, start_timeout_s, log)
        if probe is not None:
            r = httpx.post(f"{base}/v1/detect", content=probe, headers={"content-type": "image/jpeg"}, timeout=60.0)
            body = r.json() if r.status_code == 200 else {}
            if r.status_code != 200 or not isinstance(body.get("probability"), float):
                raise WorkzoneError(f"workzone serve started but answered a probe with {r.status_code}: {r.text[:300]}")
        yield Served(base, log, os.fstat(log.fileno()).st_size, switch_interval_ms=_switch_interval_ms(device),
                     engine_process=_env_flag("WORKZONE_ENGINE_PROCESS") or workers > 1, http_workers=workers,
                     batch_workers=int(os.environ.get("WORKZONE_BATCH_WORKERS", "1") or 1))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def http_latency(blobs: list[bytes], size: str, *, pipeline: str, device: str, rate: float, seconds: float,
                 batch_size: int = 64, batch_wait_ms: float = 2.0, start_timeout_s: float = 240.0,
                 addresses: int = DEFAULT_ADDRESSES, clients: int = 1) -> Row:
    """Serve ``pipeline`` on loopback and time ``rate`` requests/s of ``blobs`` for ``seconds``, sent
    from ``addresses`` loopback source addresses, by ``clients`` processes.

    Raises:
        WorkzoneError: the server did not become ready within ``start_timeout_s``.
    """
    with served(pipeline, device, batch_size=batch_size, batch_wait_ms=batch_wait_ms,
                queue_size=max(256, int(rate * 2)), start_timeout_s=start_timeout_s, probe=blobs[0]) as server:
        return _timed(server, blobs, size, device, rate, seconds, batch_size, batch_wait_ms, addresses=addresses,
                      clients=clients)


def http_sweep(blobs: list[bytes], size: str, *, pipeline: str, device: str, rates: Sequence[float], seconds: float,
               p99_limit_ms: float = 100.0, search_seconds: float = 5.0, max_rate: float = 20000.0,
               batch_size: int = 64, batch_wait_ms: float = 2.0, start_timeout_s: float = 240.0,
               addresses: int = DEFAULT_ADDRESSES, server_log: str | os.PathLike[str] | None = None,
               clients: int = 1) -> list[Row]:
    """One server, timed at each of ``rates``, then the highest rate whose p99 stays within ``p99_limit_ms``
    (the load from ``addresses`` loopback source addresses; the server's log kept in ``server_log`` if given).

    The search doubles past the last rate that held (up to ``max_rate``), then bisects three times between
    the best that held and the first that did not, ``search_seconds`` each; its rows say "search".
    """
    rows: list[Row] = []
    with served(pipeline, device, batch_size=batch_size, batch_wait_ms=batch_wait_ms,
                queue_size=max(1024, int(max(rates) * 2)), start_timeout_s=start_timeout_s, probe=blobs[0],
                log_path=server_log) as server:
        def timed(rate: float, secs: float, search: bool = False) -> Row:
            return _timed(server, blobs, size, device, rate, secs, batch_size, batch_wait_ms, search=search,
                          addresses=addresses, clients=clients)

        for rate in rates:
            rows.append(timed(rate, seconds))

        def holds(row: Row) -> bool:
            answered = row.stages.get("all requests", {})
            return answered.get("p99_ms", float("inf")) <= p99_limit_ms and answered.get("errors", 1.0) == 0

        good = max((r for r in rows if holds(r)), key=lambda r: r.images / max(r.seconds, 1e-9), default=None)
        lo = max((rate for rate, r in zip(rates, rows) if holds(r)), default=0.0)
        hi = min((rate for rate, r in zip(rates, rows) if not holds(r) and rate > lo), default=None)
        steps = 0
        while hi is None and lo and lo * 2 <= max_rate and steps < 3:
            row = timed(lo * 2, search_seconds, search=True)
            rows.append(row)
            steps += 1
            if holds(row):
                lo, good = lo * 2, row
            else:
                hi = lo * 2
        for _ in range(3 if hi is not None else 0):
            mid = (lo + hi) / 2 if lo else hi / 2
            row = timed(mid, search_seconds, search=True)
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


def _timed(server: "Served", blobs: list[bytes], size: str, device: str, rate: float, seconds: float,
           batch_size: int, batch_wait_ms: float, *, search: bool = False, addresses: int = DEFAULT_ADDRESSES,
           clients: int = 1) -> Row:
    httpx = __import__("httpx")
    # What the warm-up and earlier rows were refused is not this row's.
    load = (asyncio.run(_load(httpx, server.url, blobs, rate, seconds, addresses, warmed=server.refusals))
            if clients <= 1 else _load_in_processes(server.url, blobs, rate, seconds, addresses, clients,
                                                    warmed=server.refusals))
    refused = server.refusals()
    lat_a, tier_a = np.array(load.lat), np.array(load.tiers)
    t1 = lat_a[tier_a == 0] if len(lat_a) else lat_a
    pct = {"p50_ms": 50, "p95_ms": 95, "p99_ms": 99}
    stages = {"tier-1 exits": {k: float(np.percentile(t1, q)) for k, q in pct.items()} | {"n": float(len(t1))}} if len(t1) else {}
    if len(lat_a):
        stages["all requests"] = ({k: float(np.percentile(lat_a, q)) for k, q in pct.items()}
                                  | {"n": float(len(lat_a)), "errors": float(load.errors)})
    stages["answers"] = {k: float(v) for k, v in sorted(load.answers.items())}
    if refused:
        stages["server log"] = {k: float(v) for k, v in refused.most_common()}
    p99 = f"p99 {np.percentile(lat_a, 99):.1f} ms; " if len(lat_a) else ""
    answers = ", ".join(f"{v} {k}" for k, v in sorted(load.answers.items()))
    why = "; server log: " + ", ".join(f"{k} {v}" for k, v in refused.most_common()) if refused else ""
    origin = (f"from {addresses} loopback address{'es' if addresses != 1 else ''}"
              + (f" in {clients} client processes" if clients > 1 else ""))
    return Row(f"HTTP /v1/detect at {rate:.0f} req/s (open loop, loopback{', search' if search else ''})", device,
               size, 1, len(load.lat), load.sent_s,
               float(np.percentile(lat_a, 50)) if len(lat_a) else float("nan"),
               float(np.percentile(lat_a, 95)) if len(lat_a) else float("nan"), stages=stages,
               notes=f"{p99}{load.errors} errors; answers: {answers}{why}; {origin}; server batch {batch_size}, "
                     f"wait {batch_wait_ms} ms, {server.batch_workers} batch worker(s), GIL switch interval "
                     f"{_interval(server.switch_interval_ms)}; cascade "
                     f"{_where(server)}; "
                     "images/s = answered/s; batch p50/p95 = request latency")


def _where(server: "Served") -> str:
    if not server.engine_process:
        return "in the server process"
    return "in an engine process" + (f" behind {server.http_workers} HTTP processes" if server.http_workers > 1 else "")


def _interval(ms: float | None) -> str:
    return f"{ms:g} ms" if ms is not None else f"{1000 * sys.getswitchinterval():g} ms (Python's)"


@dataclass
class Served:
    """A running ``workzone serve`` child: its base URL, and its log read for refusals."""

    url: str
    log: IO[bytes]
    read_to: int = 0
    #: The GIL switch interval the server set (ms), None where it kept Python's (``WORKZONE_GIL_SWITCH_MS``).
    switch_interval_ms: float | None = None
    #: Whether its cascade runs in an engine process (``WORKZONE_ENGINE_PROCESS``, inherited by the child).
    engine_process: bool = False
    #: Batches that may run at once (``WORKZONE_BATCH_WORKERS``).
    batch_workers: int = 1
    #: HTTP server processes in front of the engine (``WORKZONE_HTTP_WORKERS``).
    http_workers: int = 1

    def refusals(self) -> Counter[str]:
        """What the server refused (and penalised) since the last call, from its log: by status, error
        type and the limit that refused (see :func:`workzone.server.admission.RefusalLog`)."""
        # pread, not seek and read: the child writes through the same file offset.
        fd = self.log.fileno()
        data = os.pread(fd, os.fstat(fd).st_size - self.read_to, self.read_to)
        data = data[:data.rfind(b"\n") + 1]  # a line still being written is read next time
        self.read_to += len(data)
        return refusal_counts(data.decode(errors="replace"))


_REFUSAL_LOG_PER_S = 1000  # the most the server takes; past it the log counts what it left out
#: What the server logs when a client address begins to be held (Admission.strike).
_PENALISED = "penalised: client="
_REFUSED = re.compile(r"refused (\d{3}) (\S+) client=\S+ \S+ \S+: (.*?)(?: \((\d+) more refusals not logged.*)?$")
#: What workzone.client_costs logs when a client changes lanes: with one client address, the costly
#: lane (one image at a time) would be the whole server.
_LANES = (("now run in the costly lane", "client moved to the costly lane"),
          ("back to the shared lane", "client back to the shared lane"),
          # DetectionService: a served batch beside a compile or kernel choice (warm-up missed a shape).
          ("met a shape for the first time", "batch beside a first run of a shape (not charged)"))
#: The limit a refusal names -> a short label (first match wins).
_LIMITS = (("WORKZONE_MAX_UPLOADS_PER_CLIENT", "uploads per client"), ("WORKZONE_MAX_INFLIGHT", "in flight"),
           ("WORKZONE_MAX_HELD_BYTES", "memory held"), ("budget cannot give", "memory for its images"),
           ("more than half the request", "expected wait"), ("queue is full", "queue full"),
           ("WORKZONE_MAX_RSS_BYTES", "resident memory ceiling"))


def refusal_counts(log_text: str) -> Counter[str]:
    """Count the refusal lines of a ``workzone serve`` log (``"429 overloaded: in flight"``, ...), the
    penalties begun (``"penalty begun"``) and the clients' lane changes; refusals the log left out
    are ``"not logged"``."""
    out: Counter[str] = Counter()
    for line in log_text.splitlines():
        if _PENALISED in line:
            out["penalty begun"] += 1
            continue
        lane = next((label for key, label in _LANES if key in line), None)
        if lane is not None:
            out[lane] += 1
            continue
        m = _REFUSED.search(line)
        if m is None:
            continue
        status, kind, reason, skipped = m.groups()
        label = next((short for key, short in _LIMITS if key in reason), reason.split(";")[0][:60])
        out[f"{status} {kind}: {label}"] += 1
        if skipped:
            out["not logged"] += int(skipped)
    return out


def _switch_interval_ms(device: str) -> float | None:
    """The GIL switch interval (ms) a ``workzone serve --device device`` child sets, from the environment it
    inherits (``WORKZONE_GIL_SWITCH_MS``; a bad value stops the child, which the start reports)."""
    from workzone._loop import gil_switch_interval_s

    raw = os.environ.get("WORKZONE_GIL_SWITCH_MS", "").strip()
    try:
        override = float(raw) if raw else None
    except ValueError:
        override = None
    s = gil_switch_interval_s(device, override)
    return None if s is None else 1000 * s


def _env_flag(name: str) -> bool:
    """A boolean setting the ``workzone serve`` child inherits, read as its settings read it."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on", "t", "y")


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


@dataclass
class _Load:
    lat: list[float] = field(default_factory=list)
    tiers: list[int] = field(default_factory=list)
    #: Answers by what they were: "200", "429 overloaded", "transport ClientOSError", ...
    answers: Counter[str] = field(default_factory=Counter)
    sent_s: float = 0.0

    @property
    def errors(self) -> int:
        return sum(n for k, n in self.answers.items() if k != "200")


async def _load(httpx: Any, base: str, blobs: list[bytes], rate: float, seconds: float,
                addresses: int = DEFAULT_ADDRESSES, warmed: Callable[[], Any] | None = None, warm: int = 64,
                share: tuple[int, int] = (0, 1), first_address: int = 0) -> _Load:
    """The open-loop load of one client process: of the ``rate * seconds`` requests due, those whose index is
    ``share[0]`` modulo ``share[1]``, from ``addresses`` loopback addresses starting at number ``first_address``."""
    try:
        import aiohttp  # lighter per request than httpx, so the generator's own cost stays out of the latency
    except ImportError:
        aiohttp = None
    headers = {"content-type": "image/jpeg"}
    sources = [f"127.0.{a // 254}.{1 + a % 254}"  # 127.0.0.1, .2, ...
               for a in range(first_address, first_address + max(1, addresses))]
    per = max(1, 2000 // len(sources))
    if aiohttp is not None:
        sessions: list[Any] = [aiohttp.ClientSession(base_url=base, timeout=aiohttp.ClientTimeout(total=30),
                                                     connector=aiohttp.TCPConnector(limit=per, local_addr=(a, 0)))
                               for a in sources]

        async def post(i: int) -> tuple[int, Any]:
            async with sessions[i % len(sessions)].post("/v1/detect", data=blobs[i % len(blobs)], headers=headers) as r:
                return r.status, _json(await r.read())
    else:
        sessions = [httpx.AsyncClient(base_url=base, timeout=30.0,
                                      transport=httpx.AsyncHTTPTransport(local_address=a),
                                      limits=httpx.Limits(max_connections=per, max_keepalive_connections=per))
                    for a in sources]

        async def post(i: int) -> tuple[int, Any]:
            r = await sessions[i % len(sessions)].post("/v1/detect", content=blobs[i % len(blobs)], headers=headers)
            return r.status_code, _json(r.content)

    out = _Load()
    async with contextlib.AsyncExitStack() as stack:
        for s in sessions:
            await stack.enter_async_context(s)
        # Warm the connection pools and the server's batches before the timed window.
        await asyncio.gather(*(post(i) for i in range(max(warm, len(sessions)) if warm else 0)), return_exceptions=True)
        if warmed is not None:
            warmed()

        async def one(i: int, due: float) -> None:
            try:
                status, body = await post(i)
            except Exception as exc:  # noqa: BLE001 - any transport failure is counted by its kind
                out.answers[f"transport {type(exc).__name__}"] += 1
                return
            done = time.perf_counter()
            if status != 200:
                kind = body.get("error", {}).get("type", "-") if isinstance(body, dict) else "-"
                out.answers[f"{status} {kind}"] += 1
                return
            out.answers["200"] += 1
            out.lat.append((done - due) * 1000.0)
            out.tiers.append(int(body.get("exit_tier", -1)))

        n = int(rate * seconds)
        t0 = time.perf_counter()
        tasks = []
        for i in range(share[0], n, share[1]):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        out.sent_s = max(time.perf_counter() - t0, 1e-9)
        await asyncio.gather(*tasks)
    return out


def _load_in_processes(base: str, blobs: list[bytes], rate: float, seconds: float, addresses: int, clients: int,
                       warmed: Callable[[], Any] | None = None) -> _Load:
    """:func:`_load` from ``clients`` processes at once (one Python process tops out at a few thousand requests
    a second, and its own lag would count as the server's latency): each sends every ``clients``-th request due,
    from its own share of the addresses; all warm up before the timed window, which they start together."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    warmed_up, go = ctx.Barrier(clients + 1), ctx.Barrier(clients + 1)
    results = ctx.Queue()
    per = max(1, addresses // clients)
    procs = [ctx.Process(target=_client_main, args=(base, blobs, rate, seconds, per, (j, clients), j * per,
                                                    warmed_up, go, results), daemon=True) for j in range(clients)]
    for p in procs:
        p.start()
    warmed_up.wait(timeout=120)
    if warmed is not None:
        warmed()  # what the warm-up was refused is not the row's
    go.wait(timeout=120)
    out = _Load()
    for _ in procs:
        lat, tiers, answers, sent_s = results.get(timeout=seconds + 120)
        out.lat.extend(lat)
        out.tiers.extend(tiers)
        out.answers.update(answers)
        out.sent_s = max(out.sent_s, sent_s)
    for p in procs:
        p.join(timeout=30)
    return out


def _client_main(base: str, blobs: list[bytes], rate: float, seconds: float, addresses: int, share: tuple[int, int],
                 first_address: int, warmed_up: Any, go: Any, results: Any) -> None:
    httpx = __import__("httpx")

    def both() -> None:
        warmed_up.wait(timeout=120)
        go.wait(timeout=120)

    load = asyncio.run(_load(httpx, base, blobs, rate, seconds, addresses, warmed=both, share=share,
                             first_address=first_address))
    results.put((load.lat, load.tiers, dict(load.answers), load.sent_s))


def _json(data: bytes) -> Any:
    import json

    try:
        return json.loads(data)
    except ValueError:
        return None  # a proxy's or a crashed handler's text: counted by its status alone
