"""Reliability benchmark: fuzzing, bombs, overload, a frozen and a dying VLM backend, kill -9.

Usage:
    python benchmarks/reliability.py [--sections api-fuzz http-fuzz bombs overload backend kill9
                                           slow-bodies cpu-bombs memory degraded]
        [--api-inputs 25000] [--http-inputs 1200] [--clients 500] [--seconds 60]
        [--slow-connections 300] [--attack-seconds 20] [--degraded-requests 200]
        [--client-loops asyncio uvloop uvloop-callbacks]
        [--sections overload-ab --baseline-src OTHER_CHECKOUT/src --baseline-env KEY=VALUE --ab-seconds 25]
        [--out benchmarks/results/reliability.md]

Every server is ``workzone serve`` with the default pipeline and default settings on 127.0.0.1 (a
free port); nothing but loopback is ever contacted (attackers use the loopback addresses 127.0.0.2
and 127.0.0.3, so the server sees them as other clients than the honest ones on 127.0.0.1). Inputs come from the project's own seed corpus
and bomb builders (``tests/reliability/corpus.py``), never third-party images. Each section appends
its figures to the results file, which also records the machine and its load average (the
machine may be shared: other processes' load inflates the latencies).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from benchmarks._machine import describe_machine  # noqa: E402
from tests.reliability.corpus import _scene, bombs  # noqa: E402
from tests.reliability.fuzz import (HttpRequest, http_requests, mutated_images, raw_request,  # noqa: E402
                                   raw_request_in_callbacks)

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _ms(xs: list[float], q: float) -> str:
    """The ``q`` quantile of ``xs`` (seconds) in ms, or "-" when there is none (a baseline without the figure)."""
    return f"{_pct(xs, q) * 1000:.0f} ms" if xs else "-"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss(pid: int) -> None:
    """Reset the kernel's peak-RSS mark of ``pid`` (VmHWM) to its RSS now."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


def _listen_counters() -> dict[str, int]:
    """The kernel's counts of connections a full accept queue turned away (``ListenOverflows``) and of
    SYNs dropped at a listener (``ListenDrops``), machine-wide (/proc/net/netstat)."""
    with open("/proc/net/netstat") as fh:
        lines = fh.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], (int(v) for v in values.split()[1:])))
            return {k: row.get(k, 0) for k in ("ListenOverflows", "ListenDrops")}
    return {}


def _loop_lag_buckets(url: str) -> dict[float, float]:
    """The server's event-loop lag histogram (``workzone_event_loop_lag_seconds``): count per upper bound."""
    import httpx

    out: dict[float, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("workzone_event_loop_lag_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def _lag_quantile(before: dict[float, float], after: dict[float, float], q: float) -> str:
    """The ``q`` quantile of the lag probes between two histogram readings, as the bucket bound it
    falls under ("<= 5 ms"), and how many probes that is."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0
    for le, n in counts:
        if total and n >= q * total:
            return f"<= {le * 1000:g} ms" if le != float("inf") else "> 1 s"
    return "-"


def _accept_queue(port: int) -> int | None:
    """Connections waiting in the accept queue of the listener on ``port`` (/proc/net/tcp, its rx_queue)."""
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return int(f[4].split(":")[1], 16)
    return None


class Server:
    """``workzone serve`` in a subprocess (default pipeline and settings unless told otherwise)."""

    def __init__(self, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**ENV, "WORKZONE_PORT": str(self.port), "WORKZONE_LOG_LEVEL": "warning", **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start and wait for /readyz; returns the seconds it took."""
        t = time.perf_counter()
        self.log = tempfile.TemporaryFile()  # its warnings (the refusal log, clients changing lanes)
        self.proc = subprocess.Popen([sys.executable, "-m", "workzone.cli.main", "serve"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        import httpx

        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with status {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return time.perf_counter() - t
            except httpx.TransportError:
                pass
            time.sleep(0.05)

    def log_count(self, text: str) -> int:
        """Lines of the server's log so far that contain ``text``."""
        self.log.seek(0)
        return sum(text.encode() in line for line in self.log)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


def _collect(strategy: Any, n: int, fn: Any) -> None:
    """Run ``fn`` on ``n`` examples of ``strategy`` (generation only, no shrinking, fixed seed)."""
    from hypothesis import HealthCheck, Phase, given, settings

    @settings(max_examples=n, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(x: Any) -> None:
        fn(x)

    run()


# -- sections --------------------------------------------------------------------------------------
def _fuzz_stats() -> dict[str, Any]:
    return {"n": 0, "decided": 0, "invalid": 0, "outside": {}, "other_workzone": 0, "slow": 0, "max_s": 0.0,
            "bad_p": 0}


def _fuzz_line(what: str, stats: dict[str, Any], wall: float, base: float, peak: float) -> str:
    return (f"{what}: {stats['n']} mutated seed images in {wall:.0f} s: {stats['decided']} decided, {stats['invalid']} "
            f"InvalidImageError, {stats['other_workzone']} other WorkzoneError, exceptions outside the tree "
            f"{stats['outside'] or 0}, probabilities outside [0, 1]: {stats['bad_p']}, inputs over 10 s: "
            f"{stats['slow']} (slowest {stats['max_s'] * 1000:.0f} ms); process peak RSS {peak:.0f} MB, {base:.0f} MB "
            f"before the first input: no input raised it by more than {peak - base:.0f} MB.")


def api_fuzz(args: argparse.Namespace) -> list[str]:
    from workzone.api import load_pipeline
    from workzone.errors import InvalidImageError, WorkzoneError
    from workzone.io.images import decode_image

    def one(pipe: Any, data: bytes, stats: dict[str, Any]) -> None:
        stats["n"] += 1
        t = time.perf_counter()
        try:
            if pipe is None:
                decode_image(data)
                stats["decided"] += 1
            else:
                d = pipe.predict(data)
                stats["decided"] += 1
                stats["bad_p"] += not (0.0 <= d.probability <= 1.0)
        except InvalidImageError:
            stats["invalid"] += 1
        except WorkzoneError:
            stats["other_workzone"] += 1
        except Exception as exc:  # noqa: BLE001 - counted: the contract says none may escape
            stats["outside"][type(exc).__name__] = stats["outside"].get(type(exc).__name__, 0) + 1
        dt_s = time.perf_counter() - t
        stats["max_s"] = max(stats["max_s"], dt_s)
        stats["slow"] += dt_s > 10

    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    lines = ["## Fuzzing through the Python API", "",
             "Mutations of the committed seed corpus (bit flips, truncations, splices, header edits, repeats, zeroed "
             "runs), generated by hypothesis with a fixed seed (no shrinking).", ""]
    stats, base, t0 = _fuzz_stats(), rss(), time.perf_counter()
    _collect(mutated_images(), args.decode_inputs, lambda data: one(None, data, stats))
    lines += ["- " + _fuzz_line("`decode_image` (the decoder every entry point uses)", stats,
                                time.perf_counter() - t0, base, rss())]
    with load_pipeline("default") as pipe:
        stats, base, t0 = _fuzz_stats(), rss(), time.perf_counter()
        _collect(mutated_images(), args.api_inputs, lambda data: one(pipe, data, stats))
        lines += ["- " + _fuzz_line("`Pipeline.predict` with the default pipeline", stats,
                                    time.perf_counter() - t0, base, rss())]
    return lines + [""]


def http_fuzz(args: argparse.Namespace) -> list[str]:
    srv = Server(WORKZONE_REFUSAL_PENALTY_S="0")  # one address sending mostly bad images: the contract, not abuse
    srv.start()
    statuses: dict[int | None, int] = {}
    slow, lat = 0, []
    loop = asyncio.new_event_loop()

    def one(req: HttpRequest) -> None:
        nonlocal slow
        r = loop.run_until_complete(raw_request("127.0.0.1", srv.port, req, timeout_s=30))
        statuses[r.status] = statuses.get(r.status, 0) + 1
        lat.append(r.latency_s)
        slow += r.latency_s > 10

    try:
        _collect(http_requests(), args.http_inputs, one)
        rss = _rss_mb(srv.proc.pid)  # type: ignore[union-attr]
    finally:
        srv.stop()
    n = sum(statuses.values())
    five = sum(v for k, v in statuses.items() if k is not None and k >= 500)
    return [
        "## Fuzzing over HTTP (`workzone serve`, default pipeline and settings)",
        "",
        f"{n} requests (mutated images as raw, octet-stream, multipart, JSON base64 and batch bodies; JSON junk, "
        f"wrong content types, odd X-Deadline-S values, URL inputs): statuses "
        f"{dict(sorted(statuses.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))}; HTTP 5xx: {five}; "
        f"dropped connections: {statuses.get(None, 0)}; over 10 s: {slow}; latency p50 {_pct(lat, .5) * 1000:.0f} ms, "
        f"p99 {_pct(lat, .99) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms; server RSS after {rss:.0f} MB.",
        "",
    ]


_PEAK = """
import json, resource, sys, time
from workzone.io.images import decode_image
from workzone.errors import InvalidImageError
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    decode_image(data); outcome = "decoded"
except InvalidImageError as exc:
    outcome = "refused: " + str(exc)[:90]
print(json.dumps({"outcome": outcome, "s": time.perf_counter() - t,
                  "peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def bomb_section(args: argparse.Namespace) -> list[str]:
    import httpx

    made = bombs()
    rows = ["## Memory and CPU bombs", "",
            "Decoded in a fresh process through `decode_image` (peak RSS above the process's own), then sent to the "
            "server as a raw body, and six of each at once in one `/v1/detect/batch` call.", "",
            "| input | size | API outcome | API time | API peak | HTTP status | HTTP time | batch of 6: status, time |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    srv = Server(WORKZONE_REFUSAL_PENALTY_S="0")  # times of the refusals themselves, not of the penalty
    srv.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in made.items():
                path = Path(tmp) / name
                path.write_bytes(data)
                out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True,
                                     env=ENV, timeout=300)
                res = json.loads(out.stdout)
                t = time.perf_counter()
                r = httpx.post(srv.url + "/v1/detect", content=data, timeout=120,
                               headers={"Content-Type": "application/octet-stream"})
                ht = time.perf_counter() - t
                import base64

                b64 = base64.b64encode(data).decode()
                t = time.perf_counter()
                rb = httpx.post(srv.url + "/v1/detect/batch", json={"images": [{"image": b64}] * 6}, timeout=120)
                bt = time.perf_counter() - t
                kinds = sorted({(x.get("error") or {}).get("type", "decided") for x in rb.json().get("results", [])})
                rows.append(f"| {name} | {len(data) / 1024:.0f} KB | {res['outcome']} | {res['s'] * 1000:.0f} ms | "
                            f"{res['peak_mb']:.0f} MB | {r.status_code} | {ht * 1000:.0f} ms | "
                            f"{rb.status_code} {'/'.join(kinds)}, {bt * 1000:.0f} ms |")
        rows.append("")
        rows.append(f"Server RSS after the bombs: {_rss_mb(srv.proc.pid):.0f} MB.")  # type: ignore[union-attr]
    finally:
        srv.stop()
    return rows + [""]


def _scene_jpeg(k: int) -> bytes:
    import io

    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(_scene(160, 120, k)).resize((640, 480)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def _overload(port: int, clients: int, seconds: float, bodies: list[bytes], deadline: str | None,
                    lags: list[float] | None = None, request: Any = raw_request) -> list[Any]:
    """Run the closed-loop clients; ``lags`` (if given) receives the generator's own event-loop lag,
    sampled every 5 ms: how late the load generator itself ran, a delay its clock adds to every answer.
    ``request`` sends one request (``raw_request`` or ``raw_request_in_callbacks``: the same clock)."""
    # The load generator shares the 2 cores and its clock is the one measured: a full collection of
    # its heap (tens of ms) would stall all 500 clients at once and show as the server's latency.
    gc.collect()
    gc.freeze()
    results: list[Any] = []
    stop = time.perf_counter() + seconds
    headers = (("X-Deadline-S", deadline),) if deadline else ()

    async def probe() -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)  # type: ignore[union-attr]

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            # Clients spread over 200 loopback addresses: the per-address upload limit is not what is measured.
            r = await request("127.0.0.1", port, HttpRequest("/v1/detect", "image/jpeg", bodies[i % len(bodies)],
                                                             headers), timeout_s=120, local_addr=f"127.0.1.{k % 200 + 1}")
            results.append(r)
            i += 1
            if r.status in (429, 503):
                await asyncio.sleep(random.uniform(0.5, 1.5))  # honours Retry-After (1 s), with jitter

    await asyncio.gather(*(client(k) for k in range(clients)), *([probe()] if lags is not None else []))
    return results


#: The load generators of the overload section: event loop, and how each client sends and reads.
CLIENT_KINDS = {"asyncio": "asyncio event loop, stream clients",
                "uvloop": "uvloop event loop, stream clients",
                "uvloop-callbacks": "uvloop event loop, clients in protocol callbacks"}


def _client_request(kind: str) -> Any:
    """How the ``kind`` of generator sends a request: the stream client (``raw_request``: each step
    resumes a coroutine, a loop turn later) or the same request and clock in the loop's callbacks
    (``raw_request_in_callbacks``: the status line stamped in the callback that receives it)."""
    return raw_request_in_callbacks if kind.endswith("-callbacks") else raw_request


def _client_loop(kind: str) -> asyncio.Runner:
    """The load generator's event loop: Python's own, or uvloop's (libuv in C: less of the two shared
    cores per request, so less of the generator's own delay in the latencies it measures)."""
    if kind.startswith("uvloop"):
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def _refusal_latencies(res: list[Any]) -> tuple[list[float], list[float], list[float]]:
    """Seconds of each 429/503 by the client's clock, the same from its connection to the status line,
    and the server's own (its Server-Timing header). The client's connect is part of its clock; on 2
    shared cores it is a large part of the tail."""
    refused = [r for r in res if r.status in (429, 503)]
    return ([r.latency_s for r in refused], [r.latency_s - r.connect_s for r in refused],
            [r.server_s for r in refused if r.server_s is not None])


def _errors(res: list[Any]) -> str:
    errs: dict[str, int] = {}
    for r in res:
        if r.status is None:
            errs[(r.error or "?")[:80]] = errs.get((r.error or "?")[:80], 0) + 1
    return f"({errs})" if errs else ""


def overload(args: argparse.Namespace) -> list[str]:
    rows = ["## Overload: loopback clients in a closed loop (a refused client waits 0.5-1.5 s, honouring "
            "Retry-After: 1; the clients use 200 loopback addresses, 127.0.1.1-200)", ""]
    bodies = [_scene_jpeg(k) for k in range(16)]
    for deadline, loop_kind in [(d, k) for d in (None, "2") for k in args.client_loops]:  # A/B back to back
        srv = Server()
        srv.start()
        pid = srv.proc.pid  # type: ignore[union-attr]
        start_rss, start_tree = _rss_mb(pid), _tree_rss_mb(pid)
        _reset_peak_rss(pid)
        listen0, lag0 = _listen_counters(), _loop_lag_buckets(srv.url)
        samples: list[float] = []
        tree: list[float] = []  # the server with its decoder processes
        backlog: list[int] = []  # the listener's accept queue
        done = False

        async def sample() -> None:
            while not done:
                samples.append(_rss_mb(pid))
                q = _accept_queue(srv.port)
                if q is not None:
                    backlog.append(q)
                if len(samples) % 5 == 0:
                    tree.append(await asyncio.to_thread(_tree_rss_mb, pid))  # walks /proc: off the clients' loop
                await asyncio.sleep(0.1)

        lags: list[float] = []

        async def go() -> list[Any]:
            nonlocal done
            s = asyncio.ensure_future(sample())
            res = await _overload(srv.port, args.clients, args.seconds, bodies, deadline, lags,
                                  _client_request(loop_kind))
            done = True
            await s
            return res

        try:
            with _client_loop(loop_kind) as runner:
                res = runner.run(go())
            listen1, lag1 = _listen_counters(), _loop_lag_buckets(srv.url)
            time.sleep(10)
            after, hwm = _rss_mb(pid), _rss_mb(pid, "VmHWM")
        finally:
            srv.stop()
        limit = 30.0 if deadline is None else float(deadline)
        ok = [r.latency_s for r in res if r.status == 200]
        degraded = sum(1 for r in res if r.status == 200 and b'"degraded":true' in r.body)
        refused, answered, inside = _refusal_latencies(res)
        # Refused at the protocol layer (no app ran: no "app" entry in Server-Timing) or by the app.
        early = [r.latency_s for r in res if r.status in (429, 503) and r.server_s is None]
        by_app = [r.latency_s for r in res if r.status in (429, 503) and r.server_s is not None]
        from_accept = [r.accept_s for r in res if r.status in (429, 503) and r.accept_s is not None]
        from_read = [r.read_s for r in res if r.status in (429, 503) and r.read_s is not None]
        connects = [r.connect_s for r in res if r.status in (429, 503) and r.connect_s is not None]
        overflows = {k: listen1[k] - listen0.get(k, 0) for k in listen1}
        late = sum(1 for x in ok if x > limit)
        other = {r.status: 0 for r in res if r.status not in (200, 429, 503)}
        for r in res:
            if r.status in other:
                other[r.status] += 1
        rows += [
            f"{args.clients} clients ({CLIENT_KINDS[loop_kind]}) for {args.seconds:.0f} s, {'no deadline header (the pipeline default, 30 s)' if deadline is None else f'X-Deadline-S: {deadline}'}: "
            f"{len(res)} responses; 200: {len(ok)} ({degraded} marked degraded; p50 {_pct(ok, .5):.2f} s, p99 {_pct(ok, .99):.2f} s, max "
            f"{max(ok, default=float('nan')):.2f} s; past the deadline: {late}); 429/503: {len(refused)} (p50 "
            f"{_pct(refused, .5) * 1000:.0f} ms, p99 {_pct(refused, .99) * 1000:.0f} ms, p99.9 "
            f"{_pct(refused, .999) * 1000:.0f} ms; refused at the protocol layer {len(early)} (p99 {_ms(early, .99)}), "
            f"by the app {len(by_app)} (p99 {_ms(by_app, .99)}); the client's connect p99 "
            f"{_ms(connects, .99)}; from connected to status line p99 {_pct(answered, .99) * 1000:.0f} ms; inside the "
            f"server from its accept of the connection p99 {_ms(from_accept, .99)}, from reading the request's first "
            f"bytes p99 {_ms(from_read, .99)}, from the app p99 {_ms(inside, .99)}; the server's event-loop lag "
            f"p99 {_lag_quantile(lag0, lag1, .99)}, p99.9 {_lag_quantile(lag0, lag1, .999)} (a probe every 50 ms); "
            f"the listener's accept queue p99 {_pct(backlog, .99):.0f}, max {max(backlog, default=0)} connections "
            f"(sampled every 0.1 s), turned away by a full queue: {overflows.get('ListenOverflows', '?')} (machine-wide "
            f"ListenOverflows; ListenDrops {overflows.get('ListenDrops', '?')}); the "
            f"load generator's own loop lag p99 {_ms(lags, .99)}); other statuses {other or 0}; "
            f"dropped connections: {other.get(None, 0)} {_errors(res)}. Server RSS: {start_rss:.0f} MB at start, peak "
            f"{hwm:.0f} MB (the kernel's high-water mark; sampled every 0.1 s: "
            f"{max(samples, default=float('nan')):.0f} MB), {after:.0f} MB 10 s after the load "
            f"({(after / start_rss - 1) * 100:+.0f} %); with its decoder processes: {start_tree:.0f} MB at start, "
            f"peak {max(tree, default=float('nan')):.0f} MB (sampled every 0.5 s).",
            "",
        ]
    return rows


def overload_ab(args: argparse.Namespace) -> list[str]:
    """The X-Deadline-S: 2 overload run, alternating this tree's server with a baseline tree's (same
    machine, same minutes), so that the machine's load, not the code, shows up as what it is."""
    if args.baseline_src is None and not args.baseline_env:
        raise SystemExit("overload-ab needs --baseline-src (the src/ folder of the code to compare against) "
                         "or --baseline-env (settings this tree's baseline runs with)")
    base_env = dict(kv.split("=", 1) for kv in args.baseline_env)
    baseline = " ".join(f"`{kv}`" for kv in [*([str(args.baseline_src)] if args.baseline_src else []),
                                               *args.baseline_env])
    bodies = [_scene_jpeg(k) for k in range(16)]
    rows = [f"## Overload A/B: {args.clients} clients, `X-Deadline-S: 2`, {args.ab_seconds:.0f} s per run, this tree "
            f"against {baseline} alternately, for each load generator", "",
            "| generator | code | load before -> after | answers | 200 | 200 past the deadline | 429/503 p50 | 429/503 p99 | "
            "429/503 p99 from connected | 429/503 p99 inside the server (from its first bytes read) | "
            "generator loop lag p99 | dropped |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    here = str(ROOT / "src")
    for kind in args.client_loops:
        for label, src, env in [("baseline", str(args.baseline_src or here), base_env), ("this tree", here, {})] * 2:
            srv = Server(PYTHONPATH=src, **env)
            srv.start()
            l0 = os.getloadavg()[0]
            lags: list[float] = []
            try:
                with _client_loop(kind) as runner:
                    res = runner.run(_overload(srv.port, args.clients, args.ab_seconds, bodies, "2", lags,
                                               _client_request(kind)))
            finally:
                srv.stop()
            ok = [r.latency_s for r in res if r.status == 200]
            ref, answered, _ = _refusal_latencies(res)
            read = [r.read_s for r in res if r.status in (429, 503) and r.read_s is not None]
            rows.append(f"| {CLIENT_KINDS[kind]} | {label} | {l0:.1f} -> {os.getloadavg()[0]:.1f} | {len(res)} | "
                        f"{len(ok)} | {sum(x > 2 for x in ok)} | {_pct(ref, .5) * 1000:.0f} ms | "
                        f"{_pct(ref, .99) * 1000:.0f} ms | {_pct(answered, .99) * 1000:.0f} ms | {_ms(read, .99)} | "
                        f"{_ms(lags, .99)} | {sum(r.status is None for r in res)} |")
    return rows + [""]


def _vlm_pipeline(name: str, url: str, vlm_params: str, head: str = "") -> str:
    """A pipeline file: the tiny classifier (a tier that never exits), then a VLM tier on ``url``."""
    return f"""name: {name}
{head}tiers:
  - name: fast
    stages: [{{name: clf, kind: onnx_classifier, model: tiny.onnx, threads: 1}}]
    fusion: {{weights: {{clf: 1.0}}}}
    exit: {{lower: 0.0, upper: 1.0}}
  - name: vlm
    stages:
      - {{name: vlm, kind: vlm_openai, base_url: "{url}", model: fake-vlm, max_pixels: 4096, {vlm_params}}}
    fusion: {{weights: {{clf: 0.5, vlm: 1.0}}}}
"""


def backend(args: argparse.Namespace) -> list[str]:
    import numpy as np

    from tests.conftest import build_tiny_classifier
    from tests.fakes.openai_server import FakeOpenAIServer, Reply
    from workzone.cascade import Cascade
    from workzone.config.loader import parse_pipeline
    from workzone.stages._remote import BreakerState
    from workzone.types import Image

    timeout = 2.0
    server = FakeOpenAIServer(Reply(p_yes=0.9, delay_s=0.05)).start()
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    text = _vlm_pipeline("backend-bench", server.url, f"timeout_s: {timeout}, breaker_cooldown_s: 5")
    images = [Image(np.full((48, 64, 3), 128, np.uint8), source=f"i{k}") for k in range(4)]
    sent = answered = degraded = 0
    events: list[str] = []

    async def go() -> float:
        nonlocal sent, answered, degraded
        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_classifier(Path(tmp) / "tiny.onnx")
            async with Cascade.from_config(parse_pipeline(text), base_dir=tmp) as cascade:
                vlm = next(s for s in cascade.stages if s.name == "vlm")

                async def client() -> None:
                    nonlocal sent, answered, degraded
                    for _ in range(6):
                        sent += 1
                        d = (await cascade.run(images[:1]))[0]
                        answered += np.isfinite(d.probability)
                        degraded += d.degraded

                await asyncio.gather(*(client() for _ in range(4)))
                server.set_reply(Reply(p_yes=0.9, delay_s=600))  # frozen: accepts, never answers
                t = time.perf_counter()
                tasks = [asyncio.ensure_future(client()) for _ in range(4)]
                while vlm.breaker.state is not BreakerState.OPEN:
                    await asyncio.sleep(0.01)
                opened = time.perf_counter() - t
                await asyncio.gather(*tasks)
                events.append(f"frozen: breaker open after {opened:.2f} s = {opened / timeout:.2f} request timeouts")
                server.stop()  # killed
                await asyncio.gather(*(client() for _ in range(4)))
                server.set_reply(Reply(p_yes=0.9, delay_s=0.05))
                server.start(port=port)  # restarted
                t = time.perf_counter()
                while vlm.breaker.state is not BreakerState.CLOSED:
                    await cascade.run(images[:1])
                    sent += 1
                    answered += 1
                    degraded += 1
                    await asyncio.sleep(0.1)
                events.append(f"restarted: breaker closed {time.perf_counter() - t:.2f} s after the restart "
                              "(5 s cool-down)")
                await asyncio.gather(*(client() for _ in range(4)))
                return opened

    asyncio.run(go())
    server.stop()
    return ["## VLM backend frozen, killed, restarted (fake OpenAI server on loopback, 4 concurrent callers)", "",
            f"Stage timeout {timeout:g} s, default breaker (5 failures, timeouts and cancellations counted). "
            + "; ".join(events) + f". Requests: {sent} sent, {answered} answered with a finite probability "
            f"({sent - answered} lost); {degraded} answers marked degraded.", ""]


def kill9(args: argparse.Namespace) -> list[str]:
    import csv

    from PIL import Image as PILImage

    from workzone.io.atomic import PARTIAL_SUFFIX, is_complete_jpeg

    rows = ["## kill -9", ""]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = []
        for k in range(60):
            rel = f"img/{k:03d}.jpg"
            (root / rel).parent.mkdir(exist_ok=True)
            PILImage.fromarray(_scene(160, 120, k)).resize((1920, 1440)).save(root / rel, "JPEG", quality=92)
            items.append({"path": rel, "label": k % 2, "split": "dev"})
        with (root / "manifest.csv").open("w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=list(items[0]))
            wr.writeheader()
            wr.writerows(items)
        out = root / "compact"
        kills = torn = 0
        for _ in range(14):
            proc = subprocess.Popen([sys.executable, "-m", "workzone.cli.main", "train", "compact-data", str(root / "manifest.csv"),
                                     "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.8, 3.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            torn += sum(1 for p in out.rglob("*.jpg") if not is_complete_jpeg(p))
        rc = subprocess.run([sys.executable, "-m", "workzone.cli.main", "train", "compact-data", str(root / "manifest.csv"),
                             "--out", str(out)], env=ENV, capture_output=True).returncode
        jpgs = list(out.rglob("*.jpg"))
        ok = sum(1 for p in jpgs if is_complete_jpeg(p) and PILImage.open(p).size)
        rows.append(f"`compact-data` on 60 drawn 1920x1440 JPEGs, killed {kills} times of 14 at random moments: torn "
                    f"JPEGs seen after the kills {torn}; the rerun exited {rc} with {ok} of {len(items)} complete, "
                    f"decodable files, {len(list(out.rglob('*' + PARTIAL_SUFFIX)))} temporaries left.")
    srv = Server()
    first = srv.start()
    bodies = [_scene_jpeg(k) for k in range(4)]

    async def load(seconds: float) -> list[Any]:
        return await _overload(srv.port, 50, seconds, bodies, None)

    async def go() -> tuple[list[Any], float]:
        task = asyncio.ensure_future(load(8))
        await asyncio.sleep(4)
        srv.kill9()
        t = time.perf_counter()
        ready = await asyncio.to_thread(srv.start)
        res = await task
        return res, ready

    res, ready = asyncio.run(go())
    srv.stop()
    dropped = sum(1 for r in res if r.status is None)
    rows.append(f"`workzone serve` (default pipeline) under 50 clients, killed with kill -9: first start to ready "
                f"{first:.1f} s; restart to ready {ready:.1f} s; {len(res)} requests during the run, {dropped} got no "
                "answer (those in flight in the killed process, and the ones sent while nothing listened).")
    return rows + [""]


# -- issue 20: cheap attacks ------------------------------------------------------------------------
ATTACKERS = ("127.0.0.2", "127.0.0.3")  # loopback addresses other than the honest clients' 127.0.0.1


def _load_now() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def _stats(res: list[Any], seconds: float, deadline: float | None = None) -> str:
    ok = [r.latency_s for r in res if r.status == 200]
    timely = sum(1 for x in ok if deadline is None or x <= deadline)
    codes: dict[Any, int] = {}
    for r in res:
        codes[r.status] = codes.get(r.status, 0) + 1
    return (f"{len(res)} answers ({len(res) / seconds:.2f}/s), 200 within the deadline {timely} "
            f"({100 * timely / max(1, len(res)):.0f} %), statuses {dict(sorted(codes.items(), key=lambda kv: str(kv[0])))}, "
            f"200 latency p50 {_pct(ok, .5):.3f} s p99 {_pct(ok, .99):.3f} s")


async def _closed_loop(port: int, seconds: float, req: HttpRequest, clients: int = 1,
                       local_addr: str | None = None, pause_on_refusal: bool = True, every_s: float = 0.0) -> list[Any]:
    """``clients`` clients sending ``req`` one after the other (at most one per ``every_s`` each) for ``seconds``."""
    res: list[Any] = []
    stop = time.perf_counter() + seconds

    async def one() -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            r = await raw_request("127.0.0.1", port, req, timeout_s=60, local_addr=local_addr)
            res.append(r)
            if pause_on_refusal and r.status in (429, 503):
                await asyncio.sleep(0.2)
            await asyncio.sleep(max(0.0, every_s - (time.perf_counter() - t)))

    await asyncio.gather(*(one() for _ in range(clients)))
    return res


async def _slow_connection(port: int, source: str, stop: float, seen: dict[str, int]) -> None:
    """Headers and a 100 KB Content-Length, then one body byte every 8 s; reconnects 1 s after an answer."""
    while time.perf_counter() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            seen["connect_failed"] = seen.get("connect_failed", 0) + 1
            await asyncio.sleep(1)
            continue
        writer.write(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 100000\r\n\r\nx")
        try:
            while time.perf_counter() < stop:
                try:
                    line = await asyncio.wait_for(reader.readline(), 8)
                except asyncio.TimeoutError:
                    writer.write(b"x")
                    await writer.drain()
                    continue
                key = line.split()[1].decode() if line.startswith(b"HTTP/1.1") else "closed"
                seen[key] = seen.get(key, 0) + 1
                break
        except OSError:
            seen["reset"] = seen.get("reset", 0) + 1
        finally:
            writer.close()
        await asyncio.sleep(1)


def slow_bodies(args: argparse.Namespace) -> list[str]:
    body = _scene_jpeg(0)
    honest = HttpRequest("/v1/detect", "image/jpeg", body, (("X-Deadline-S", "5"),))
    srv = Server()
    srv.start()
    lines = ["## Slow bodies (issue 20, attack 1)", "",
             f"`workzone serve` (default pipeline and settings). {args.slow_connections} connections from "
             f"{ATTACKERS[0]} each send their headers and one byte of a 100 KB body every 8 s, and reconnect 1 s after "
             "any answer; 2 honest clients on 127.0.0.1 send a 640x480 JPEG in a closed loop with `X-Deadline-S: 5`.",
             ""]
    try:
        loop = asyncio.new_event_loop()
        base_load = _load_now()
        alone = loop.run_until_complete(_closed_loop(srv.port, args.attack_seconds, honest, clients=2))
        lines.append(f"- honest clients alone, {args.attack_seconds:.0f} s ({base_load}): "
                     f"{_stats(alone, args.attack_seconds, 5)}.")
        seen: dict[str, int] = {}

        async def attacked() -> list[Any]:
            stop = time.perf_counter() + args.attack_seconds + 10
            slow = [asyncio.ensure_future(_slow_connection(srv.port, ATTACKERS[0], stop, seen))
                    for _ in range(args.slow_connections)]
            await asyncio.sleep(10)  # every slow connection is open (or refused) before measuring
            res = await _closed_loop(srv.port, args.attack_seconds, honest, clients=2)
            await asyncio.gather(*slow)
            return res

        load0 = _load_now()
        under = loop.run_until_complete(attacked())
        lines.append(f"- with the {args.slow_connections} slow connections ({load0} before, {_load_now()} after): "
                     f"{_stats(under, args.attack_seconds, 5)}; the slow connections were answered {seen} "
                     "(429: refused at once past the per-address upload limit of 16; 408: their body budget, "
                     "30 s here, ran out).")
        loop.close()
    finally:
        srv.stop()
    return lines + [""]


def _bomb_req(data: bytes, ctype: str) -> HttpRequest:
    return HttpRequest("/v1/detect", ctype, data)


def cpu_bombs(args: argparse.Namespace) -> list[str]:
    from tests.reliability.corpus import attack_inputs

    att = attack_inputs()
    honest = HttpRequest("/v1/detect", "image/jpeg", _scene_jpeg(1))
    lines = ["## CPU bombs inside the size limits (issue 20, attack 2)", "",
             "`workzone serve` (default pipeline and settings). One honest client on 127.0.0.1 sends a 640x480 JPEG "
             f"in a closed loop for {args.attack_seconds:.0f} s, alone and then while two clients ({', '.join(ATTACKERS)}) "
             "send a bomb back to back (or paced); each attack right after its own baseline (the client "
             "alone). Pillow alone takes the times given to decode each bomb "
             "(in-process, no limits but Pillow's). Default settings: an address with more than 5 images refused "
             "in 10 s has each further request held 1 s; a client address whose images cost the cascade more than 0.2 s each "
             "(measured; before its first is measured, its pixels at a typical image's cost per pixel), and twice a typical image, has its images run in the costly lane, one at a time beside the shared batches "
             "(`WORKZONE_COSTLY_IMAGE_S`). The last attack is repeated on a server with that lane off "
             "(`WORKZONE_COSTLY_IMAGE_S=0`: one lane for all, as before it), right after.", ""]
    loop = asyncio.new_event_loop()

    def attack(srv: Server, name: str, ctype: str, every: float, label: str = "") -> None:
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", "import io,sys; from PIL import Image; "
                              "Image.open(io.BytesIO(open(sys.argv[1],'rb').read())).load()", "/dev/stdin"],
                             input=att[name], env=ENV, capture_output=True, timeout=300)
        pillow_s = time.perf_counter() - t
        # The baseline right before each attack (back to back): the machine's load drifts by the minute.
        time.sleep(5)  # the previous attack's work is over
        load0 = _load_now()
        alone = loop.run_until_complete(_closed_loop(srv.port, args.attack_seconds, honest))
        base = len(alone) / args.attack_seconds
        lines.append(f"- honest client alone, right before ({load0}){label}: {_stats(alone, args.attack_seconds)}.")

        async def attacked() -> tuple[list[Any], list[Any]]:
            bomb = _bomb_req(att[name], ctype)
            b = [asyncio.ensure_future(_closed_loop(srv.port, args.attack_seconds, bomb, local_addr=a,
                                                    pause_on_refusal=False, every_s=every)) for a in ATTACKERS]
            h = await _closed_loop(srv.port, args.attack_seconds, honest)
            bombs_res = [r for x in await asyncio.gather(*b) for r in x]
            return h, bombs_res

        load0 = _load_now()
        moved = srv.log_count("now run in the costly lane")
        h, b = loop.run_until_complete(attacked())
        moved = srv.log_count("now run in the costly lane") - moved
        kinds: dict[str, int] = {}
        for r in b:
            k = f"{r.status} {json.loads(r.body).get('error', {}).get('type', 'decided') if r.body else ''}".strip()
            kinds[k] = kinds.get(k, 0) + 1
        pace = "back to back" if not every else f"one per {every:g} s each (the issue's rate was one per 2.8 s)"
        lines.append(f"- with two clients sending `{name}` ({len(att[name]) / 1024:.0f} KB; Pillow alone "
                     f"{pillow_s:.2f} s, exit {out.returncode}) {pace}{label} ({load0} before, {_load_now()} after): "
                     f"honest {_stats(h, args.attack_seconds)}: {len(h) / args.attack_seconds / base:.2f}x its "
                     f"throughput alone just before; the bombs got {kinds} (p50 {_pct([r.latency_s for r in b], .5) * 1000:.0f} ms); "
                     f"clients moved to the costly lane meanwhile: {moved}.")

    srv = Server()
    srv.start()
    try:
        for name, ctype, every in (("rle_bmp_4000", "image/bmp", 0.0), ("rle_bmp_4000", "image/bmp", 1.0),
                                   ("webp_4896", "image/webp", 0.0)):
            attack(srv, name, ctype, every)
        import base64

        for name, n in (("rle_bmp_4000", 64), ("webp_4896", 64)):
            doc = json.dumps({"images": [{"image": base64.b64encode(att[name]).decode()}] * n}).encode()
            load0 = _load_now()
            r = loop.run_until_complete(raw_request("127.0.0.1", srv.port, HttpRequest(
                "/v1/detect/batch", "application/json", doc), timeout_s=300))
            kind = json.loads(r.body).get("error", {}).get("type", "-") if r.body else "-"
            lines.append(f"- one batch request of {n} `{name}` ({len(doc) / 1024:.0f} KB, {load0}): {r.status} "
                         f"{kind} in {r.latency_s:.2f} s.")
    finally:
        srv.stop()
    srv = Server(WORKZONE_COSTLY_IMAGE_S="0")
    srv.start()
    try:
        attack(srv, "webp_4896", "image/webp", 0.0, label=", costly lane off")
    finally:
        srv.stop()
        loop.close()
    return lines + [""]


def _tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and all its descendants (the decoder processes), in MB."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as fh:
                    ppid = int(fh.read().rpartition(b")")[2].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += _rss_mb(p)
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total


def memory(args: argparse.Namespace) -> list[str]:
    import base64
    import threading

    from tests.reliability.corpus import attack_inputs

    att = attack_inputs()
    webp = base64.b64encode(att["webp_4896"]).decode()
    cases = [
        ("one `webp_4896` (1 KB, 4896x4896) as the body", HttpRequest("/v1/detect", "image/webp", att["webp_4896"])),
        ("a batch of 5 `webp_4896`", HttpRequest("/v1/detect/batch", "application/json",
                                                 json.dumps({"images": [{"image": webp}] * 5}).encode())),
        ("a batch of 6 `webp_4896` (the attack of issue 20)", HttpRequest(
            "/v1/detect/batch", "application/json", json.dumps({"images": [{"image": webp}] * 6}).encode())),
        ("a batch of 64 `webp_4896`", HttpRequest("/v1/detect/batch", "application/json",
                                                  json.dumps({"images": [{"image": webp}] * 64}).encode())),
    ] + [(f"`{k}` ({len(att[k]) / 1024:.0f} KB)", HttpRequest("/v1/detect", "application/octet-stream", att[k]))
         for k in ("tiff_20000_entries", "tiff_shared_values", "jpeg_exif_5000_entries")]
    srv = Server(WORKZONE_REFUSAL_PENALTY_S="0")
    srv.start()
    pid = srv.proc.pid  # type: ignore[union-attr]
    rows = ["## Memory reserved before decoding, metadata bombs (issue 20, attacks 3 and 6)", "",
            "`workzone serve` (default pipeline and settings: `WORKZONE_MAX_HELD_BYTES` 256 MiB). RSS of the server "
            "process, and of the server with its decoder processes, sampled every 20 ms during each request.", "",
            "| request | status | time | server RSS before | peak rise (server) | peak rise (with decoders) | load |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    try:
        loop = asyncio.new_event_loop()
        for what, req in cases:
            time.sleep(2)
            before, before_tree = _rss_mb(pid), _tree_rss_mb(pid)
            peaks = [before, before_tree]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peaks[0] = max(peaks[0], _rss_mb(pid))
                    peaks[1] = max(peaks[1], _tree_rss_mb(pid))
                    time.sleep(0.02)

            th = threading.Thread(target=sample)
            th.start()
            load0 = _load_now()
            r = loop.run_until_complete(raw_request("127.0.0.1", srv.port, req, timeout_s=120))
            done.set()
            th.join()
            kind = "decided" if r.status == 200 else (json.loads(r.body).get("error", {}).get("type", "-")
                                                      if r.body else "-")
            rows.append(f"| {what} | {r.status} {kind} | {r.latency_s * 1000:.0f} ms | {before:.0f} MB | "
                        f"{peaks[0] - before:+.0f} MB | {peaks[1] - before_tree:+.0f} MB | {load0} |")
        rows.append("")
        rows.append(f"Server RSS at the end: {_rss_mb(pid):.0f} MB ({_tree_rss_mb(pid):.0f} MB with the decoders).")
        loop.close()
    finally:
        srv.stop()
    return rows + [""]


def degraded(args: argparse.Namespace) -> list[str]:
    import base64
    import threading

    from tests.conftest import build_tiny_classifier
    from tests.fakes.openai_server import FakeOpenAIServer, Reply

    lock, n = threading.Lock(), [0]

    def reply(body: dict) -> Reply:  # a flaky backend: every third request fails, every fifth is slow
        with lock:
            n[0] += 1
            k = n[0]
        if k % 3 == 0:
            return Reply(status=500)
        return Reply(p_yes=0.9, delay_s=3.0 if k % 5 == 0 else 0.0)

    backend = FakeOpenAIServer(Reply()).start()
    backend.set_reply(reply)
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_classifier(Path(tmp) / "tiny.onnx")
        pipeline = Path(tmp) / "flaky.yaml"
        pipeline.write_text(_vlm_pipeline("flaky-vlm", backend.url, "retries: 0, timeout_s: 1.0, breaker_failures: "
                                          "1000, breaker_timeouts: 1000", head="deadline_s: 10\n"))
        srv = Server(WORKZONE_PIPELINE=str(pipeline))
        srv.start()
        bodies = [_scene_jpeg(k) for k in range(4)]
        b64 = [base64.b64encode(b).decode() for b in bodies]
        answers = unmarked = urls = lost = 0
        try:
            import httpx

            load0 = _load_now()
            with httpx.Client(timeout=30) as client:
                for k in range(args.degraded_requests):
                    if k % 2:
                        r = client.post(srv.url + "/v1/detect/batch",
                                        json={"images": [{"image": b64[k % 4]}, {"image": b64[(k + 1) % 4]}]})
                        decisions = [x["decision"] for x in r.json()["results"]]
                    else:
                        r = client.post(srv.url + "/v1/detect", content=bodies[k % 4],
                                        headers={"Content-Type": "image/jpeg"})
                        decisions = [r.json()]
                    urls += "http://" in r.text
                    for d in decisions:
                        answers += 1
                        lost_here = any(s["error"] for s in d["stages"]) or not any(
                            s["stage"] == "vlm" for s in d["stages"])
                        lost += lost_here
                        unmarked += lost_here and not d["degraded"]
                described = client.get(srv.url + "/v1/pipeline").text
        finally:
            srv.stop()
            backend.stop()
    return ["## Degraded answers and backend URLs (issue 20, attack 5)", "",
            f"`workzone serve` with a classifier tier and a VLM tier on a flaky fake backend (every third request "
            f"HTTP 500, every fifth 3 s late against a 1-s stage timeout; breaker kept closed): "
            f"{args.degraded_requests} requests, half single images, half batches of 2 ({load0}). "
            f"{answers} answers, {lost} lost the VLM stage, {unmarked} of them without `degraded: true`; "
            f"responses containing a URL: {urls}; `GET /v1/pipeline` contains a URL: {'http://' in described}.", ""]


SECTIONS = {"api-fuzz": api_fuzz, "http-fuzz": http_fuzz, "bombs": bomb_section, "overload": overload,
            "backend": backend, "kill9": kill9, "slow-bodies": slow_bodies, "cpu-bombs": cpu_bombs, "memory": memory,
            "degraded": degraded, "overload-ab": overload_ab}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=[k for k in SECTIONS if k != "overload-ab"],
                    choices=list(SECTIONS))
    ap.add_argument("--decode-inputs", type=int, default=25000)
    ap.add_argument("--api-inputs", type=int, default=2000)
    ap.add_argument("--http-inputs", type=int, default=1200)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--client-loops", nargs="+", choices=tuple(CLIENT_KINDS), default=["asyncio"],
                    help="overload: the load generators (event loop; '-callbacks': clients in protocol callbacks), "
                         "each run in turn")
    ap.add_argument("--slow-connections", type=int, default=300)
    ap.add_argument("--attack-seconds", type=float, default=20.0)
    ap.add_argument("--degraded-requests", type=int, default=200)
    ap.add_argument("--baseline-src", type=Path, default=None, help="overload-ab: src/ of the code to compare with")
    ap.add_argument("--baseline-env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overload-ab: settings of the baseline's server (e.g. WORKZONE_COMPUTE_NICE=0)")
    ap.add_argument("--ab-seconds", type=float, default=25.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reliability.md")
    args = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    from workzone.io.atomic import atomic_write_text

    stamp = (f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, `python benchmarks/reliability.py "
             f"{' '.join(sys.argv[1:])}`")
    sections = _read_sections(args.out)
    for name in args.sections:
        load0 = os.getloadavg()
        t = time.perf_counter()
        part = SECTIONS[name](args)
        load1 = os.getloadavg()
        part.append(f"_Measured {stamp}: {time.perf_counter() - t:.0f} s; load average {load0[0]:.1f} before, "
                    f"{load1[0]:.1f} after (1-minute, on 2 cores: other processes shared them)._")
        part.append("")
        print("\n".join(part), flush=True)
        sections[name] = part
        # After every section, keeping the sections of earlier runs that this one did not redo.
        # A hand-written "summary" section (acceptance against the figures) is kept at the top.
        body = [line for key in ("summary", *SECTIONS) if key in sections
                for line in [_MARK.format(key), *sections[key]]]
        atomic_write_text(args.out, "\n".join([*_HEADER, f"Machine: {describe_machine()}.", "", *body]) + "\n")


_MARK = "<!-- section: {} -->"
_HEADER = ["# Reliability: fuzzing, bombs, overload, dying and hanging backends, kill -9", "",
           "Written by `benchmarks/reliability.py` (one section per run option `--sections`); the short versions "
           "run in CI as `tests/reliability/`.", ""]


def _read_sections(path: Path) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    if not path.exists():
        return sections
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("<!-- section: "):
            current = line.removeprefix("<!-- section: ").removesuffix(" -->")
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return sections


if __name__ == "__main__":
    main()
