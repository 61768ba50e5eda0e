"""Decoding that can be stopped: worker processes with a hard CPU budget per image and per request.

A decoder in a thread cannot be stopped, and a decoder written in Python holds the GIL while it
runs: one small hostile file can take a core (or the whole event loop) for as long as its data
says (issue 20: a 1 KB RLE BMP cost 2.8 s). :class:`DecodePool` runs :func:`probe_image` and
:func:`decode_image` in ``workers`` child processes instead. The parent watches each job's CPU time
(``/proc/<pid>/stat``; wall time where there is no ``/proc``) and kills the worker when the job
passes its budget, then forks a fresh one; the caller gets :class:`DecodeBudgetExceeded` (HTTP 422).

Each worker also has a hard memory cap (``RLIMIT_DATA``, ``max_decode_bytes`` plus a margin): the
header's memory estimate decides what is decoded and what is reserved, the cap is the backstop that
turns an estimate that was wrong into a refused image (422), not a server out of memory.

A :class:`DecodeBudget` is what one request may spend: every image of a batch draws on the same one,
so a batch of slow images is stopped as a whole once the request's budget is gone.

Pixels come back through the socket straight into the caller's array (no pickling of pixel data).
The parent's end of each socket is non-blocking and read and written through the event loop: a
worker the scheduler has not run yet (two busy cores) makes its job wait, never the server's loop.
Each worker is a fresh interpreter (``python -m workzone.io.decode_pool``); a killed one is replaced
in a background thread (a few hundred milliseconds) while the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
import struct
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable, ContextManager

import numpy as np

from workzone.errors import DeadlineExceeded, DecodeBudgetExceeded, InvalidImageError
from workzone.io.images import ImageHeader, ImageLimits, decode_image, probe_image
from workzone.types import Image

__all__ = ["DecodeBudget", "DecodePool"]

log = logging.getLogger("workzone.decode")

_POLL_S = 0.01  # how often a running job's CPU time is read
_START_S = 60.0  # a decoder process's start-up (a busy machine can take seconds)
_CAP_MARGIN = 128 * 2**20  # a decoder's memory cap above max_decode_bytes (libraries loaded on demand, slack)
_HEAVY_NICE = 10  # CPU priority of the costly-image lane (CFS gives nice 10 about a tenth of nice 0's share)
try:
    _TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
    _TICK_S = 0.01


@dataclass
class DecodeBudget:
    """CPU seconds of decoding one request may still spend (all images of a batch share it).

    Attributes:
        cpu_s: seconds left.
        total_s: what the request started with (for messages).
    """

    cpu_s: float
    total_s: float = 0.0

    def __post_init__(self) -> None:
        self.total_s = self.total_s or self.cpu_s


def _serve(conn: Connection, limits: ImageLimits, nice: int = 0) -> None:  # pragma: no cover - runs in the worker
    """A worker's loop: one job at a time, ``(op, source)`` then the encoded bytes. A decode that runs
    out of the process's memory cap (:func:`_cap_memory`) is answered ``memory``, and the worker goes on."""
    from workzone._memory import release_free_memory

    if nice:
        os.nice(nice)  # the costly-image lane yields the CPU to the server and the cheap lane

    while True:
        try:
            op, source = conn.recv()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            if op == "probe":
                h = probe_image(data, limits=limits, source=source)
                conn.send(("header", h.format, h.size, h.out_bytes, h.cost_s, h.work_bytes))
            else:
                img = decode_image(data, limits=limits, source=source)
                px = np.ascontiguousarray(img.pixels)
                conn.send(("image", px.shape, img.original_size))
                conn.send_bytes(memoryview(px).cast("B"))
                del img, px  # a worker must not keep a large decode's heap (trimmed below)
        except InvalidImageError as exc:
            conn.send(("memory" if isinstance(exc.__cause__, MemoryError) else "invalid", str(exc)))
        except MemoryError:
            conn.send(("memory", f"{source}: not enough memory to decode this image; lower its size"))
        release_free_memory()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid``; ``None`` where ``/proc`` cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
        return (int(fields[11]) + int(fields[12])) * _TICK_S
    except (OSError, IndexError, ValueError):
        return None


class _Worker:
    """One decoder: ``python -m workzone.io.decode_pool`` over a socket pair.

    A fresh interpreter, not a fork: the server's threads and locks are not copied into it, and,
    unlike multiprocessing's spawn and forkserver, it never re-imports the host's ``__main__`` (a
    script without a main guard would run again in every decoder).
    """

    def __init__(self, limits: ImageLimits, heavy: bool = False, memory_cap: int = 0) -> None:
        import dataclasses
        import json
        import subprocess
        import sys

        mine, theirs = socket.socketpair()
        self.heavy = heavy
        args = [sys.executable, "-m", "workzone.io.decode_pool", str(theirs.fileno()),
                str(_HEAVY_NICE if heavy else 0), json.dumps(dataclasses.asdict(limits)), str(memory_cap)]
        self.proc = subprocess.Popen(args, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
        theirs.close()
        self.sock = mine

    def wait_ready(self) -> "_Worker":
        """Block until start-up (imports, Pillow's plugins) is over: its CPU time is not the first job's.
        Runs in a thread; the socket is non-blocking afterwards (the event loop reads and writes it)."""
        self.sock.settimeout(_START_S)
        try:
            ready = _read_message(self.sock) == "ready"
        except OSError:
            ready = False
        if not ready:
            self.kill()
            raise RuntimeError(f"a decoder process did not start within {_START_S:g} s")
        self.sock.setblocking(False)
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        used = _cpu_seconds(self.proc.pid)
        return time.perf_counter() if used is None else used

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(timeout=5)
        self.sock.close()

    async def send(self, head: tuple, data: bytes) -> None:
        """``head`` then ``data``, framed as :class:`multiprocessing.connection.Connection` frames them."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, _frame(pickle.dumps(head)))
        await loop.sock_sendall(self.sock, _frame_header(len(data)))
        await loop.sock_sendall(self.sock, data)

    async def receive(self) -> tuple:
        """The worker's reply; the pixels of an ``image`` reply land straight in a new array."""
        reply = pickle.loads(await self._frame())
        if reply[0] != "image":
            return reply
        px = np.empty(tuple(reply[1]), np.uint8)
        await self._frame(into=memoryview(px).cast("B"))
        return reply[0], px, reply[2]

    async def _frame(self, into: memoryview | None = None) -> bytes:
        loop = asyncio.get_running_loop()
        (size,) = struct.unpack("!i", await self._exactly(loop, 4))
        if size == -1:
            (size,) = struct.unpack("!Q", await self._exactly(loop, 8))
        if into is None:
            return await self._exactly(loop, size)
        if size != len(into):
            raise OSError(f"the decoder sent {size} bytes of pixels for a buffer of {len(into)}")
        await self._exactly(loop, size, into)
        return b""

    async def _exactly(self, loop: asyncio.AbstractEventLoop, n: int, into: memoryview | None = None) -> bytes:
        buf = memoryview(bytearray(n)) if into is None else into
        got = 0
        while got < n:
            k = await loop.sock_recv_into(self.sock, buf[got:])
            if not k:
                raise EOFError("the decoder process closed its socket")
            got += k
        return bytes(buf) if into is None else b""


class DecodePool:
    """Decoder processes in two lanes, each job under a CPU budget.

    Cheap images (header reads, and decodes expected to cost at most ``heavy_s``) use ``workers``
    processes; costly ones (large WebP and PNG, many-scan JPEGs) wait for ``heavy_workers`` processes
    of their own that run at a lower CPU priority, so a client sending costly images back to back
    holds up other costly images, not everyone's.

    Args:
        workers: processes of the cheap lane.
        limits: the limits every image is decoded under.
        image_cpu_s: most CPU seconds one image's decode may take.
        heavy_s: expected decode seconds above which an image goes to the costly lane.
        heavy_workers: processes of the costly lane.
        probe_cpu_s: most CPU seconds reading one header may take (honest headers take milliseconds).
        memory_cap: most bytes a worker may map beyond what it holds once started (0: no cap); by
            default ``limits.max_decode_bytes`` and a margin of 128 MiB (the estimates behind
            ``max_decode_bytes`` are measured, the cap is the backstop). A decode past it is refused
            (:class:`DecodeBudgetExceeded`, HTTP 422).
    """

    def __init__(self, workers: int, limits: ImageLimits, *, image_cpu_s: float = 1.0, heavy_s: float = 0.2,
                 heavy_workers: int = 1, probe_cpu_s: float = 0.25, memory_cap: int | None = None) -> None:
        self.workers = workers
        self.heavy_workers = heavy_workers
        self.limits = limits
        self.image_cpu_s = image_cpu_s
        self.heavy_s = heavy_s
        self.probe_cpu_s = probe_cpu_s
        self.memory_cap = limits.max_decode_bytes + _CAP_MARGIN if memory_cap is None else memory_cap
        self.killed = 0  # workers killed for running past a budget (metrics, tests)
        self.decoded = 0  # images decoded (tests check that a refused request decoded nothing)
        self._idle: asyncio.Queue[_Worker] | None = None  # the cheap lane
        self._idle_heavy: asyncio.Queue[_Worker] | None = None
        self._all: list[_Worker] = []
        self._starting: asyncio.Lock | None = None

    @property
    def started(self) -> bool:
        return self._idle is not None

    async def start(self) -> None:
        """Start the workers (in a thread: process start-up blocks)."""
        def start_all() -> list[_Worker]:
            started = [_Worker(self.limits, heavy=k >= self.workers, memory_cap=self.memory_cap)
                       for k in range(self.workers + self.heavy_workers)]
            return [w.wait_ready() for w in started]  # they start in parallel

        workers = await asyncio.to_thread(start_all)
        self._all = list(workers)
        self._idle, self._idle_heavy = asyncio.Queue(), asyncio.Queue()
        for w in workers:
            self._lane(w.heavy).put_nowait(w)

    def _lane(self, heavy: bool) -> "asyncio.Queue[_Worker]":
        queue = self._idle_heavy if heavy and self.heavy_workers else self._idle
        assert queue is not None
        return queue

    def close(self) -> None:
        """Kill the workers (each a SIGKILL and a wait: milliseconds). A later job starts them again."""
        for w in self._all:
            w.kill()
        self._all = []
        self._idle = self._idle_heavy = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def probe(self, data: bytes, source: str, budget: DecodeBudget, end: float | None = None) -> ImageHeader:
        """The image's header (checked against every limit), read in a cheap-lane worker under ``budget``."""
        kind, fmt, size, out, cost, work = await self._job("probe", data, source, budget, end, self.probe_cpu_s)
        return ImageHeader(fmt, tuple(size), out, cost, work)  # type: ignore[arg-type]

    async def decode(self, data: bytes, source: str, budget: DecodeBudget, end: float | None = None,
                     cost_s: float = 0.0, memory: Callable[[], ContextManager[None]] | None = None) -> Image:
        """Decode in a worker under ``budget``; ``cost_s`` (the header's estimate) picks the lane;
        ``memory()`` is held from when a worker is free for the image to the end of its decode (the
        server's reservation of the decode's memory: what raises there is raised, nothing decoded).

        Raises:
            InvalidImageError: not an image, or over a limit.
            DecodeBudgetExceeded: the decode ran past the image's or the request's CPU budget, or
                past the worker's memory cap.
            DeadlineExceeded: no worker came free, or the decode did not finish, before ``end``.
        """
        _, px, original = await self._job("decode", data, source, budget, end, self.image_cpu_s,
                                          heavy=cost_s > self.heavy_s, memory=memory)
        self.decoded += 1
        return Image(px, source=source, original_size=tuple(original))  # type: ignore[arg-type]

    async def _job(self, op: str, data: bytes, source: str, budget: DecodeBudget, end: float | None,
                   cpu_s: float, heavy: bool = False, memory: Callable[[], ContextManager[None]] | None = None) -> tuple:
        if self._idle is None:  # not started yet: the first caller starts it, the others wait
            self._starting = self._starting or asyncio.Lock()
            async with self._starting:
                if self._idle is None:
                    await self.start()
        if budget.cpu_s <= 0:
            raise self._over(source, budget, whole=True)
        wait = None if end is None else max(0.0, end - time.perf_counter())
        try:
            worker = await asyncio.wait_for(self._lane(heavy).get(), timeout=wait)
        except asyncio.TimeoutError:
            raise DeadlineExceeded("decode", "the deadline passed while the image waited to be decoded") from None
        held = contextlib.ExitStack()
        try:
            if memory is not None:
                held.enter_context(memory())
        except BaseException:
            self._lane(worker.heavy).put_nowait(worker)  # not started: the worker is as it was
            raise
        with held:
            return await self._run(worker, op, data, source, budget, end, cpu_s)

    async def _run(self, worker: _Worker, op: str, data: bytes, source: str, budget: DecodeBudget,
                   end: float | None, cpu_s: float) -> tuple:
        healthy = False  # a worker stopped mid-job (budget, deadline, cancellation, crash) is replaced
        cpu0 = worker.cpu()
        try:
            limit = min(cpu_s, budget.cpu_s)
            await worker.send((op, source), data)
            reply, over = await self._watch(worker, cpu0, limit, end)
            budget.cpu_s -= worker.cpu() - cpu0
            if over == "deadline":
                raise DeadlineExceeded("decode", "the deadline passed while the image was being decoded")
            if over is not None:
                raise self._over(source, budget, whole=limit < cpu_s, cpu_s=cpu_s)
            healthy = True
        except (EOFError, OSError) as exc:
            raise InvalidImageError(f"{source}: the decoder process failed on this image ({type(exc).__name__})") \
                from exc
        finally:
            if healthy:
                self._lane(worker.heavy).put_nowait(worker)
            else:
                await self._replace(worker)
        if reply[0] == "invalid":
            raise InvalidImageError(reply[1])
        if reply[0] == "memory":
            raise DecodeBudgetExceeded(f"{reply[1]} (a decoder process may use {self.memory_cap / 2**20:.0f} MiB; "
                                       "send a smaller image)")
        return reply

    def _over(self, source: str, budget: DecodeBudget, whole: bool, cpu_s: float = 0.0) -> DecodeBudgetExceeded:
        if whole:
            return DecodeBudgetExceeded(
                f"the request's images took more than its decode budget of {budget.total_s:g} CPU seconds; "
                "send fewer or smaller images per request", whole_request=True)
        return DecodeBudgetExceeded(f"{source}: decoding took more than {cpu_s:g} CPU seconds and was "
                                    "stopped; re-encode the image as a baseline JPEG or PNG")

    async def _watch(self, worker: _Worker, cpu0: float, limit: float, end: float | None) -> tuple[Any, str | None]:
        """The worker's reply, or ``(None, "budget" | "deadline")`` when it must be stopped first (its
        CPU time is read every ``_POLL_S`` while the reply is awaited)."""
        reading = asyncio.ensure_future(worker.receive())
        try:
            while True:
                done, _ = await asyncio.wait({reading}, timeout=_POLL_S)
                if done:
                    return reading.result(), None
                if worker.cpu() - cpu0 > limit:
                    return None, "budget"
                if end is not None and time.perf_counter() > end:
                    return None, "deadline"
                if not worker.alive():
                    raise EOFError("the decoder process exited")
        finally:
            if not reading.done():  # the worker is replaced: its half-read reply goes with it
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)

    async def _replace(self, worker: _Worker) -> None:
        self.killed += 1
        try:
            fresh = await asyncio.to_thread(self._swap, worker)
        except Exception:  # noqa: BLE001 - the pool shrinks by one rather than failing the caller twice
            log.exception("could not start a replacement decoder process")
            return
        if self._idle is not None:
            self._lane(fresh.heavy).put_nowait(fresh)

    def _swap(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = _Worker(self.limits, heavy=worker.heavy, memory_cap=self.memory_cap).wait_ready()
        self._all = [fresh if w is worker else w for w in self._all]
        return fresh


def _frame_header(n: int) -> bytes:
    # Connection's framing: a signed 32-bit length, or -1 and an unsigned 64-bit one for huge payloads.
    return struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)


def _frame(payload: bytes) -> bytes:
    return _frame_header(len(payload)) + payload


def _read_message(sock: socket.socket) -> Any:
    """One pickled message read from a blocking ``sock`` (start-up only)."""
    def exactly(n: int) -> bytes:
        chunks = []
        while n:
            chunk = sock.recv(n)
            if not chunk:
                raise EOFError("the decoder process closed its socket")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    (size,) = struct.unpack("!i", exactly(4))
    if size == -1:
        (size,) = struct.unpack("!Q", exactly(8))
    return pickle.loads(exactly(size))


def _main(argv: list[str]) -> None:  # pragma: no cover - the worker's entry point
    import json

    fd, nice, limits = int(argv[0]), int(argv[1]), ImageLimits(**json.loads(argv[2]))
    conn = Connection(fd)
    _warm_up()
    _cap_memory(int(argv[3]) if len(argv) > 3 else 0)
    conn.send("ready")
    _serve(conn, limits, nice)


def _cap_memory(cap: int) -> None:  # pragma: no cover - runs in the worker
    """A hard cap on the memory this process may map beyond what it holds now (``RLIMIT_DATA``: the
    heap and private mappings, which every image buffer is): the backstop behind the estimates that
    decides from the header. Past it an allocation fails (``MemoryError``) and the image is refused;
    the process and the server go on."""
    if cap <= 0:
        return
    import resource

    try:
        with open("/proc/self/status") as fh:
            data = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmData:"))
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = data + cap if hard == resource.RLIM_INFINITY else min(hard, data + cap)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (OSError, ValueError, StopIteration):  # not Linux: the estimates alone bound the decode
        log.warning("could not cap a decoder process's memory")


def _warm_up() -> None:  # pragma: no cover - runs in the worker
    """Load Pillow's plugins and codecs now, so that a first job's CPU time is its own. OpenCV, which
    decodes large WebPs, is loaded by the first of them (25 MB kept at rest otherwise, in every worker)."""
    import io

    from PIL import Image as PILImage

    PILImage.init()
    for fmt in ("PNG", "JPEG", "WEBP"):
        buf = io.BytesIO()
        PILImage.new("RGB", (32, 32)).save(buf, fmt)
        decode_image(buf.getvalue())


if __name__ == "__main__":  # pragma: no cover
    import sys

    _main(sys.argv[1:])
