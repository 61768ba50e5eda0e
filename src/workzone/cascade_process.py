"""A cascade in a process of its own (the engine), driven from the server's process.

Why: in one process the HTTP event loop and the compute thread share one GIL. The compute thread releases
it at every operator it dispatches (~700 per batch on CUDA) and must win it back from a loop that is busy
parsing and answering requests; under load, served batches on one H100 took 25-150x their in-process time
and the server held 125 requests/s (``benchmarks/results/served_gap_cuda.md``). A shorter GIL switch interval
won some back, not the ceiling. The fix vLLM's OpenAI server uses: the API server and the engine in separate
processes, bytes in, answers out.

:class:`CascadeProcess` stands where :class:`workzone.cascade.Cascade` stands in
:class:`workzone.service.DetectionService`: same ``start``/``run``/``aclose``/``ready``/``cold_runs``,
same ``config`` and ``tiers`` (the stages are built unloaded in this process, for ``describe()`` and the prior).
The engine:

- builds and warms the real cascade on the device, then answers ``run`` messages;
- decodes JPEGs the server deferred (``EncodedImage``: header read, pixels not) on its own device decoder,
  nvJPEG in one call per batch; the server's process never touches CUDA;
- merges the batches that wait for it into one cascade run (up to the warmed batch size, so that no merged
  batch meets a shape for the first time), each under the tightest deadline of what it merges;
- sends each tier event as it happens (``/v1/detect/stream`` stays a stream) and the decisions at the end.

If the engine dies (out of memory, a crash in a native library), every waiting request fails with
:class:`EngineStopped` and the cascade reports not ready, so ``/readyz`` says 503 and a supervisor restarts
the server. Nothing is retried on a new engine: a request that crashed one would crash the next.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from workzone._loop import gil_switch_interval_s
from workzone.cascade import Cascade, EventCallback, TierEvent
from workzone.config.schema import PipelineConfig
from workzone.errors import BackendUnavailable, ConfigError, StageError
from workzone.io.images import DEFAULT_LIMITS, ImageLimits
from workzone.types import Decision, Image

__all__ = ["CascadeProcess", "EngineAddress", "EngineStopped"]

log = logging.getLogger("workzone.engine")

#: Seconds the engine is given to close its stages and exit before it is terminated.
_CLOSE_TIMEOUT_S = 30.0


class EngineStopped(BackendUnavailable):
    """The engine process is not running (it exited, or was never started): the server answers 503."""

    def __init__(self, message: str) -> None:
        super().__init__("engine", message)


@dataclass(frozen=True)
class _Spec:
    """What the engine needs to build the cascade (everything picklable), and where more servers reach it."""

    config: PipelineConfig
    base_dir: str
    device: str
    extras: dict[str, Any]
    gpu_decode: str
    limits: ImageLimits
    largest_batch: int | None
    listen: str | None = None  # a Unix socket path where more servers' CascadeProcess may attach
    authkey: bytes = b""  # what they must prove (multiprocessing's HMAC handshake)


@dataclass(frozen=True)
class EngineAddress:
    """Where a running engine takes more servers: its Unix socket and the key they must know."""

    path: str
    authkey: bytes


# -- messages ------------------------------------------------------------------------------------------
# server -> engine: ("run", id, items, deadline_s, run_all, want_events) | ("close",)
# engine -> server: ("ready",) | ("failed", message) | ("event", id, TierEvent) | ("done", id, decisions, cold_runs)
#                   | ("error", id, type name, message)
# An item is ("jpeg", bytes, source, (w, h)) for a JPEG the engine decodes, or ("image", Image).


def _item(image: Image) -> tuple[Any, ...]:
    from workzone.accel.device_image import EncodedImage

    if isinstance(image, EncodedImage):
        return ("jpeg", image.data, image.source, image.original_size)  # type: ignore[attr-defined]
    if type(image) is not Image:  # a device tensor or a lazy image: its pixels, as a plain Image
        image = Image(image.pixels, image.source, image.original_size, image.frame)
    return ("image", image)


class CascadeProcess:
    """A :class:`~workzone.cascade.Cascade` run by an engine process (see the module docstring).

    Args:
        config: the validated pipeline.
        base_dir: where its relative paths resolve.
        device: the engine's compute device.
        extras: stage extras (must pickle: they cross to the engine).
        gpu_decode: the engine's JPEG decoder on CUDA (``nvjpeg`` or ``libjpeg``).
        limits: the limits every image the engine decodes respects.
        listen: a Unix socket path: the engine this starts also takes other servers there (:attr:`address`),
            so that several HTTP processes share one engine and its batches.
        attach: start no engine; use the one at this address (another process started it with ``listen``).
            The engine is stopped by whoever started it, not by :meth:`aclose` here.

    Raises:
        ConfigError: ``extras`` cannot be sent to another process.
    """

    #: The service hands deferred JPEGs (``EncodedImage``) straight to :meth:`run`: the engine decodes them.
    decodes_encoded = True

    def __init__(self, config: PipelineConfig, base_dir: str | Path = ".", device: str = "cpu",
                 extras: dict[str, Any] | None = None, *, gpu_decode: str = "nvjpeg",
                 limits: ImageLimits = DEFAULT_LIMITS, listen: str | None = None,
                 attach: EngineAddress | None = None) -> None:
        import pickle
        import secrets

        try:
            pickle.dumps(dict(extras or {}))
        except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing here
            raise ConfigError(f"the engine process cannot be given the stage extras ({type(exc).__name__}: {exc}); "
                              "serve without the engine process, or pass extras that pickle") from exc
        # The stages, built but never loaded here: config, describe() and the prior without a model in memory.
        self._local = Cascade.from_config(config, base_dir=base_dir, device=device, extras=extras)
        self.config = config
        self.tiers = self._local.tiers
        self._spec = _Spec(config, str(base_dir), device, dict(extras or {}), gpu_decode, limits, None, listen,
                           secrets.token_bytes(32) if listen else b"")
        #: Where other servers attach to the engine this starts (None without ``listen``).
        self.address = EngineAddress(listen, self._spec.authkey) if listen else None
        self._attach = attach
        self._proc: Any = None
        self._conn: Any = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._ids = itertools.count()
        self._waiting: dict[int, tuple[asyncio.Future[tuple[list[Decision], float]], EventCallback | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready_msg: asyncio.Future[tuple[Any, ...]] | None = None
        self._cold_runs = 0
        self._started = False
        self._stopped: str | None = None

    # -- the Cascade interface ------------------------------------------------------------------------
    @property
    def stages(self) -> list[Any]:
        return self._local.stages

    @property
    def ready(self) -> bool:
        return self._started and self._stopped is None

    @property
    def cold_runs(self) -> int:
        """The engine's stage runs that met a shape for the first time (as of its last answer)."""
        return self._cold_runs

    @property
    def pid(self) -> int | None:
        """The engine's process id, once started."""
        return None if self._proc is None else self._proc.pid

    def prior_decision(self, source: str, why: str) -> Decision:
        return self._local.prior_decision(source, why)

    async def start(self, largest_batch: int | None = None) -> None:
        """Start the engine and wait until its cascade is loaded and warmed (up to ``largest_batch``).

        Raises:
            StageError: the engine could not load the pipeline (its error, quoted) or exited while loading.
        """
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._ready_msg = self._loop.create_future()
        if self._attach is not None:
            await self._attach_to(self._attach)
            return
        # A fresh interpreter (never a fork of a process that may hold CUDA or threads), started as a module so
        # that nothing of the caller's main script is imported again; a private socket pair carries the messages.
        ours, theirs = socket.socketpair()
        self._proc = subprocess.Popen([sys.executable, "-m", "workzone.cascade_process", str(theirs.fileno())],
                                      pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        spec = _Spec(**{**self._spec.__dict__, "largest_batch": largest_batch})
        await asyncio.to_thread(self._send, ("spec", spec))
        self._reader = threading.Thread(target=self._read, name="workzone-engine-reader", daemon=True)
        self._reader.start()
        msg = await self._ready_msg
        if msg[0] != "ready":
            await asyncio.to_thread(_wait, self._proc, _CLOSE_TIMEOUT_S)
            raise StageError("engine", f"the engine process could not load the pipeline: {msg[1]}")
        self._started = True
        log.info("engine process %d ready on %s", self._proc.pid, self._spec.device)

    async def _attach_to(self, address: EngineAddress) -> None:
        from multiprocessing.connection import Client

        try:
            self._conn = await asyncio.to_thread(Client, address.path, "AF_UNIX", address.authkey)
        except (OSError, EOFError) as exc:
            raise EngineStopped(f"no engine answers at {address.path} ({type(exc).__name__}: {exc})") from exc
        self._reader = threading.Thread(target=self._read, name="workzone-engine-reader", daemon=True)
        self._reader.start()
        msg = await self._ready_msg  # the engine greets every server it takes
        if msg[0] != "ready":
            raise EngineStopped(f"the engine at {address.path} did not take this server: {msg[1]}")
        self._started = True

    async def run(self, images: Sequence[Image], *, deadline_s: float | None = None,
                  on_event: EventCallback | None = None, run_all: bool = False) -> list[Decision]:
        """Decide every image in the engine (see :meth:`workzone.cascade.Cascade.run`).

        Raises:
            EngineStopped: the engine is not running, or exited before answering.
            StageError: the engine's cascade raised (its type and message, quoted).
        """
        return (await self.run_timed(images, deadline_s=deadline_s, on_event=on_event, run_all=run_all))[0]

    async def run_timed(self, images: Sequence[Image], *, deadline_s: float | None = None,
                        on_event: EventCallback | None = None, run_all: bool = False) -> tuple[list[Decision], float]:
        """:meth:`run`, and the seconds these images cost the engine: their share of the run they were merged into
        (decode and cascade), without the time they waited for it behind other batches. The service charges clients
        this (the costly lane), not the wall time, which under load is mostly other servers' work."""
        if not images:
            return [], 0.0
        if self._stopped is not None or not self._started:
            raise EngineStopped(self._stopped or "the engine process has not been started")
        rid = next(self._ids)
        fut: asyncio.Future[tuple[list[Decision], float]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = (fut, on_event)
        msg = ("run", rid, [_item(im) for im in images], deadline_s, run_all, on_event is not None)
        try:
            # In a thread: a large batch of pixels must not hold the event loop while the pipe drains.
            await asyncio.to_thread(self._send, msg)
        except (OSError, EOFError) as exc:
            self._waiting.pop(rid, None)
            raise EngineStopped(f"the engine process could not be reached ({type(exc).__name__})") from exc
        return await fut

    async def aclose(self) -> None:
        """Ask the engine to close its stages and exit (terminated if it does not within 30 s); an attached one
        is only let go."""
        if self._attach is not None and self._conn is not None:
            self._stopped = self._stopped or "this server let the engine go"
            self._started = False
            try:
                await asyncio.to_thread(self._send, ("bye",))  # the engine closes its end: the reader ends
            except (OSError, EOFError, ValueError):
                pass
            if self._reader is not None:
                await asyncio.to_thread(self._reader.join, 5.0)
            self._conn.close()
            return
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        self._stopped = self._stopped or "the engine process was closed"
        try:
            await asyncio.to_thread(self._send, ("close",))
        except (OSError, EOFError, ValueError):
            pass
        if not await asyncio.to_thread(_wait, proc, _CLOSE_TIMEOUT_S):
            log.warning("engine process %d did not exit within %.0f s: terminated", proc.pid, _CLOSE_TIMEOUT_S)
            proc.terminate()
            await asyncio.to_thread(_wait, proc, 5.0)
        self._started = False
        if self._conn is not None:
            self._conn.close()

    # -- the pipe -------------------------------------------------------------------------------------
    def _send(self, msg: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def _read(self) -> None:
        """The reader thread: every message from the engine, handed to the event loop in order."""
        loop = self._loop
        assert loop is not None
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # noqa: BLE001 - an answer that does not unpickle: the engine is unusable
                log.exception("an engine message could not be read")
                break
            loop.call_soon_threadsafe(self._on_message, msg)
        proc = self._proc
        code = None if proc is None or not _wait(proc, 1.0) else proc.returncode
        with_code = "" if code is None else f" (exit code {code})"
        try:
            loop.call_soon_threadsafe(self._on_exit, f"the engine process exited{with_code}")
        except RuntimeError:  # the loop is closed: nobody is waiting
            pass

    def _on_message(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind in ("ready", "failed"):
            if self._ready_msg is not None and not self._ready_msg.done():
                self._ready_msg.set_result(msg)
            return
        if kind == "event":
            waiting = self._waiting.get(msg[1])
            if waiting is not None and waiting[1] is not None:
                res = waiting[1](msg[2])
                if asyncio.iscoroutine(res):
                    asyncio.ensure_future(res)
            return
        fut, _ = self._waiting.pop(msg[1], (None, None))
        if fut is None or fut.done():
            return
        if kind == "done":
            self._cold_runs = msg[3]
            fut.set_result((msg[2], msg[4]))
        else:
            fut.set_exception(StageError("engine", f"{msg[2]}: {msg[3]}"))

    def _on_exit(self, why: str) -> None:
        if self._stopped is None and self._started:
            log.error("%s; %d request(s) were waiting for it", why, len(self._waiting))
        self._stopped = self._stopped or why
        if self._ready_msg is not None and not self._ready_msg.done():
            self._ready_msg.set_result(("failed", why))
        waiting, self._waiting = self._waiting, {}
        for fut, _ in waiting.values():
            if not fut.done():
                fut.set_exception(EngineStopped(why))


# -- the engine ------------------------------------------------------------------------------------------
def _wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether ``proc`` exited within ``timeout`` seconds."""
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _engine_main(fd: int) -> None:
    """The engine process: read its spec, build and warm the cascade, then answer until told to close."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s[engine]: %(message)s")
    # Stopped by its owner only (a "close" message, or the owner's end of the socket closing): a SIGTERM or Ctrl-C
    # sent to the whole process group must not end it while its servers still finish their requests.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        kind, spec = conn.recv()
        # The engine's own compute thread meets the same contention as a server's did (its receiver threads), so it
        # gets the interval a server on its device gets (0.5 ms on CUDA; benchmarks/results/served_gap_cuda.md).
        switch = gil_switch_interval_s(spec.device)
        if switch is not None:
            sys.setswitchinterval(switch)
        asyncio.run(_Engine(conn, spec).serve())
    except EOFError:  # the server went away before the spec came
        pass
    finally:
        conn.close()


class _Engine:
    """The engine's side: one owner connection (the server that started it; its end closes the engine) and, with
    ``spec.listen``, the servers that attach later. A message's id is kept with its connection, ``(conn, id)``."""

    def __init__(self, conn: Any, spec: _Spec) -> None:
        self.owner = conn
        self.spec = spec
        self.inbox: queue.SimpleQueue[tuple[Any, tuple[Any, ...]]] = queue.SimpleQueue()
        self.cascade: Cascade | None = None
        self.decoder: Any = None
        self._locks: dict[int, threading.Lock] = {}
        self.stats = _Stats()

    def send(self, conn: Any, msg: tuple[Any, ...]) -> None:
        lock = self._locks.setdefault(id(conn), threading.Lock())
        try:
            with lock:
                conn.send(msg)
        except (OSError, ValueError):  # that server went away: its answers are dropped, the others go on
            pass

    def _receive(self, conn: Any, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        # One thread per connection: messages are taken off the socket while a batch computes, so no server
        # blocks on a full socket.
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = ("close",) if conn is self.owner else ("bye",)
            if msg[0] == "bye":
                conn.close()  # ends the attached server's reader
                return
            self.inbox.put((conn, msg if msg[0] != "run" else (*msg, time.monotonic())))
            loop.call_soon_threadsafe(wake.set)
            if msg[0] == "close":
                return

    def _listen(self, listener: Any, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        from multiprocessing import AuthenticationError

        while True:
            try:
                conn = listener.accept()
            except AuthenticationError:
                log.warning("a connection to the engine without its key was refused")
                continue
            except OSError:  # the listener was closed: the engine is stopping
                return
            self.send(conn, ("ready",))
            threading.Thread(target=self._receive, args=(conn, loop, wake), name="workzone-engine-receiver",
                             daemon=True).start()

    async def serve(self) -> None:
        from workzone.image_decoder import ImageDecoder

        spec = self.spec
        try:
            self.cascade = Cascade.from_config(spec.config, base_dir=spec.base_dir, device=spec.device,
                                               extras=spec.extras)
            self.decoder = ImageDecoder(spec.device, limits=spec.limits, gpu_decode=spec.gpu_decode)
            await self.cascade.start(largest_batch=spec.largest_batch)
        except BaseException as exc:  # noqa: BLE001 - reported to the server, which raises it
            self.send(self.owner, ("failed", f"{type(exc).__name__}: {exc}"))
            return
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        listener = None
        if spec.listen:
            from multiprocessing.connection import Listener

            listener = Listener(spec.listen, "AF_UNIX", authkey=spec.authkey)
            threading.Thread(target=self._listen, args=(listener, loop, wake), name="workzone-engine-listener",
                             daemon=True).start()
        self.send(self.owner, ("ready",))
        threading.Thread(target=self._receive, args=(self.owner, loop, wake), name="workzone-engine-receiver",
                         daemon=True).start()
        try:
            while True:
                await wake.wait()
                wake.clear()
                runs = []
                while True:
                    try:
                        conn, msg = self.inbox.get_nowait()
                    except queue.Empty:
                        break
                    runs.append(msg if msg[0] != "run" else (msg[0], (conn, msg[1]), *msg[2:]))
                closing = any(m[0] == "close" for m in runs)
                for group in _merged([m for m in runs if m[0] == "run"], self.spec.largest_batch):
                    waited = time.monotonic() - min(m[-1] for m in group)
                    spent = await self._run(group)
                    self.stats.add(sum(len(m[2]) for m in group), spent, waited, self.inbox.qsize())
                if closing:
                    return
        finally:
            if listener is not None:
                listener.close()  # also removes the socket file
            await self.cascade.aclose()
            self.decoder.close()

    async def _run(self, group: list[tuple[Any, ...]]) -> float:
        """One cascade run over the merged messages' images; each message answered with its own part. A message's
        key (its second field) is ``(connection, id)``. Returns the run's seconds (decode and cascade)."""
        assert self.cascade is not None
        owners: list[tuple[Any, int]] = []  # per merged image: (message key, its index there)
        items: list[tuple[Any, ...]] = []
        for _, key, its, *_rest in group:
            owners.extend((key, k) for k in range(len(its)))
            items.extend(its)
        deadlines = [m[3] for m in group if m[3] is not None]
        deadline = min(deadlines) if deadlines else None
        run_all = group[0][4]
        wants = {m[1] for m in group if m[5]}
        t0 = time.perf_counter()
        images, failed = self._decode(items)
        live = [k for k in range(len(items)) if k not in failed]

        def on_event(ev: TierEvent) -> None:
            key, k = owners[live[ev.index]]
            if key in wants:
                self.send(key[0], ("event", key[1], _reindexed(ev, k)))

        try:
            decided = await self.cascade.run([images[k] for k in live], deadline_s=deadline,
                                             on_event=on_event if wants else None, run_all=run_all)
        except Exception as exc:  # noqa: BLE001 - the batch's callers get it; the engine serves on
            log.warning("a batch of %d image(s) failed: %s", len(live), traceback.format_exc(limit=3))
            for key in dict.fromkeys(m[1] for m in group):
                self.send(key[0], ("error", key[1], type(exc).__name__, str(exc)))
            return time.perf_counter() - t0
        out: dict[int, Decision] = dict(failed)
        out.update(zip(live, decided))
        answers: dict[Any, list[Decision]] = {m[1]: [] for m in group}
        for k in range(len(items)):
            answers[owners[k][0]].append(out[k])
        cold = self.cascade.cold_runs
        spent = time.perf_counter() - t0
        for key, decisions in answers.items():
            # Each message's share of the run: what its images cost the engine, not how long they waited for it.
            self.send(key[0], ("done", key[1], decisions, cold, spent * len(decisions) / len(items)))
        return spent

    def _decode(self, items: list[tuple[Any, ...]]) -> tuple[list[Any], dict[int, Decision]]:
        """The items as images: deferred JPEGs decoded together (a file that fails gets the prior, as in
        the service)."""
        assert self.cascade is not None
        images: list[Any] = [it[1] if it[0] == "image" else None for it in items]
        jpegs = [k for k, it in enumerate(items) if it[0] == "jpeg"]
        failed: dict[int, Decision] = {}
        if not jpegs:
            return images, failed
        decoded = self.decoder.decode_each([items[k][1] for k in jpegs], [items[k][2] for k in jpegs])
        for k, img in zip(jpegs, decoded):
            if isinstance(img, Exception):
                failed[k] = self.cascade.prior_decision(items[k][2], f"the image could not be decoded: {img}")
            else:
                images[k] = img
        return images, failed


class _Stats:
    """What the engine did, logged every ``every_s`` seconds in which a batch waited ``slow_s`` or more for it: where
    a served request's time goes when the engine, not the server, is the queue."""

    def __init__(self, every_s: float = 10.0, slow_s: float = 1.0) -> None:
        self.every_s, self.slow_s = every_s, slow_s
        self._reset(time.monotonic())

    def _reset(self, now: float) -> None:
        self.since, self.batches, self.images, self.run_s, self.longest_wait_s, self.deepest = now, 0, 0, 0.0, 0.0, 0

    def add(self, images: int, run_s: float, waited_s: float, inbox: int) -> None:
        self.batches += 1
        self.images += images
        self.run_s += run_s
        self.longest_wait_s = max(self.longest_wait_s, waited_s)
        self.deepest = max(self.deepest, inbox)
        now = time.monotonic()
        if now - self.since < self.every_s:
            return
        if self.longest_wait_s >= self.slow_s:
            log.warning("engine, last %.0f s: %d runs of %d images (%.1f a run, %.1f ms a run); the longest a batch "
                        "waited for the engine %.0f ms; deepest inbox %d messages", now - self.since, self.batches,
                        self.images, self.images / self.batches, 1000 * self.run_s / self.batches,
                        1000 * self.longest_wait_s, self.deepest)
        self._reset(now)


def _reindexed(ev: TierEvent, index: int) -> TierEvent:
    from dataclasses import replace

    return replace(ev, index=index)


def _merged(runs: list[tuple[Any, ...]], largest: int | None) -> list[list[tuple[Any, ...]]]:
    """Waiting ``run`` messages in merged groups: in arrival order, one ``run_all`` setting per group, at most
    ``largest`` images a group (a message larger than that runs alone, as it would in process)."""
    groups: list[list[tuple[Any, ...]]] = []
    size = 0
    for msg in runs:
        n = len(msg[2])
        if groups and groups[-1][0][4] == msg[4] and (largest is None or size + n <= largest):
            groups[-1].append(msg)
            size += n
        else:
            groups.append([msg])
            size = n
    return groups


if __name__ == "__main__":
    _engine_main(int(sys.argv[1]))
