"""Where the time goes under overload: ``workzone serve`` profiled from inside while the reliability
benchmark's 500 clients load it (stdlib only: py-spy is not installed here).

Usage:
    python benchmarks/overload_profile.py [--seconds 20] [--deadline 2] [--src OTHER_CHECKOUT/src]

The server runs in a child process (``--serve``) with, beside uvicorn:

- a sampler thread reading the event-loop thread's stack every 2 ms (``sys._current_frames``);
  ``<idle>`` is the loop waiting for events;
- a loop-lag probe (a 5-ms sleep, and by how much it overshot);
- ``gc.callbacks`` timing every collection, by generation;
- the server-side time of every response, from the end of its headers to its status line, with the
  429/503s split into those refused at the protocol layer (``protocol``: from their first bytes read;
  no ASGI task), by the middleware from the headers (``early``) and later (``late:`` the raise site).

The client side splits each refusal's latency into connecting, writing and waiting for the status
line. The report is printed; nothing is written to benchmarks/results/ (the figures quoted in
reliability.md's summary come from runs of this script, with the load beside them).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextvars
import gc
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


# -- the server side (child process) -----------------------------------------------------------------
def serve(out: Path) -> None:
    main_ident = threading.get_ident()
    stacks: collections.Counter[str] = collections.Counter()
    lags: list[float] = []
    responses: list[tuple[str, float]] = []
    collections_ms: list[tuple[int, float]] = []
    where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="")
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            collections_ms.append((info["generation"], (time.perf_counter() - gc_start[0]) * 1000))

    gc.callbacks.append(on_gc)

    def report() -> None:
        by: dict[str, list[float]] = collections.defaultdict(list)
        for status, seconds in list(responses):
            by[status].append(seconds * 1000)
        gcs = list(collections_ms)
        data = {"samples": sum(stacks.values()), "stacks": stacks.most_common(30),
                "loop_lag_ms": {q: _pct(lags, q) * 1000 for q in (0.5, 0.99, 0.999, 1.0)},
                "gc_ms": {g: {"n": sum(1 for k, _ in gcs if k == g),
                              "max": max((d for k, d in gcs if k == g), default=0.0)} for g in (0, 1, 2)},
                "server_ms": {k: {"n": len(v), "p50": _pct(v, .5), "p99": _pct(v, .99)} for k, v in by.items()}}
        out.write_text(json.dumps(data, indent=1))

    def sample() -> None:
        last = time.perf_counter()
        while True:
            time.sleep(0.002)
            if time.perf_counter() - last > 2:  # uvicorn re-raises SIGTERM: no chance to write at exit
                last = time.perf_counter()
                report()
            frame = sys._current_frames().get(main_ident)
            stack = []
            while frame is not None and len(stack) < 6:
                stack.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}")
                frame = frame.f_back
            idle = stack and (stack[0].endswith("run_until_complete") or stack[0] == "runners.py:run")
            stacks["<idle>" if idle else " < ".join(stack)] += 1

    from uvicorn.protocols.http import httptools_impl

    from workzone import errors
    from workzone.server.admission import ENDPOINT_KEY
    from workzone.server.app import create_server
    from workzone.server.settings import ServerSettings

    cycle_init, cycle_send, overloaded_init = (httptools_impl.RequestResponseCycle.__init__,
                                               httptools_impl.RequestResponseCycle.send, errors.Overloaded.__init__)

    def init(self: Any, *a: Any, **k: Any) -> None:
        cycle_init(self, *a, **k)
        self._profile_t0 = time.perf_counter()  # the request's headers are complete

    async def send(self: Any, message: Any) -> None:
        if message["type"] == "http.response.start":
            status = str(message["status"])
            if status in ("429", "503"):
                status += "-early" if ENDPOINT_KEY in self.scope else f"-late:{where.get()}"
            responses.append((status, time.perf_counter() - self._profile_t0))
        await cycle_send(self, message)

    def overloaded(self: Any, *a: Any, **k: Any) -> None:
        frame, names = sys._getframe(1), []
        while frame is not None and len(names) < 3:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        where.set("/".join(names))
        overloaded_init(self, *a, **k)

    from workzone.server import admission

    header_refusal = admission.HeaderRefusal.__call__

    def refuse_early(self: Any, scope: Any) -> Any:
        # Refused at the protocol layer (no cycle, no task): timed from the request's first bytes read.
        answer = header_refusal(self, scope)
        if answer is not None:
            responses.append((f"{answer[0]}-protocol", time.perf_counter() - scope[admission.READ_KEY]))
        return answer

    admission.HeaderRefusal.__call__ = refuse_early
    httptools_impl.RequestResponseCycle.__init__ = init
    httptools_impl.RequestResponseCycle.send = send
    errors.Overloaded.__init__ = overloaded

    async def probe_lag() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    server = create_server(ServerSettings())
    served = server.serve

    async def serve_with_probe(sockets: Any = None) -> None:
        asyncio.ensure_future(probe_lag())
        await served(sockets)

    server.serve = serve_with_probe  # type: ignore[method-assign]
    threading.Thread(target=sample, daemon=True).start()
    server.run()


# -- the client side -----------------------------------------------------------------------------------
def drive(args: argparse.Namespace) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "src")]
    import httpx

    from benchmarks.reliability import _free_port, _overload, _scene_jpeg

    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    port = _free_port()
    src = str(args.src or ROOT / "src")
    out = Path(tempfile.mkdtemp()) / "profile.json"
    env = {**os.environ, "PYTHONPATH": src, "WORKZONE_PORT": str(port), "WORKZONE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(out)], env=env)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        bodies = [_scene_jpeg(k) for k in range(16)]
        load0 = os.getloadavg()[0]
        res = asyncio.run(_overload(port, args.clients, args.seconds, bodies, args.deadline))
        load1 = os.getloadavg()[0]
        time.sleep(2.5)  # one more report from the sampler
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    ok = [r.latency_s for r in res if r.status == 200]
    refused = [r for r in res if r.status in (429, 503)]
    limit = float(args.deadline) if args.deadline else 30.0
    print(f"load {load0:.1f} -> {load1:.1f}; {len(res)} answers, 200: {len(ok)} ({sum(x > limit for x in ok)} late); "
          f"dropped {sum(r.status is None for r in res)}")
    print("client 429/503 ms: total p50 %.1f p99 %.1f; connecting p99 %.1f; connected to status line p99 %.1f" % (
        _pct([r.latency_s for r in refused], .5) * 1000, _pct([r.latency_s for r in refused], .99) * 1000,
        _pct([r.connect_s for r in refused], .99) * 1000,
        _pct([r.latency_s - r.connect_s for r in refused], .99) * 1000))
    print(json.dumps(json.loads(out.read_text()), indent=1))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--deadline", default="2", help="X-Deadline-S of every request ('' for none)")
    ap.add_argument("--src", type=Path, default=None, help="the src/ folder of the code to profile")
    drive(ap.parse_args())


if __name__ == "__main__":
    main()
