"""The detection service: decode, queue into the micro-batcher, run the cascade under deadlines.

It is core: it knows no HTTP routes (the server's routes, the SN72 miner, batch jobs and the sync
:class:`workzone.api.Pipeline` all drive it) and imports no web framework. One instance owns one
:class:`~workzone.cascade.Cascade` and one :class:`ImageDecoder` (the decode policy: CPU, or nvJPEG on a
CUDA device) for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, ContextManager, Literal, Protocol, Sequence

from workzone.micro_batcher import BatchPolicy, MicroBatcher
from workzone.client_costs import ClientCosts
from workzone.cascade import Cascade, TierEvent
from workzone.config.loader import load_pipeline_config
from workzone.config.schema import PipelineConfig
from workzone.io.decode_pool import DecodeBudget
from workzone.io.images import ImageHeader, ImageLimits
from workzone.errors import DeadlineExceeded, NotReady
from workzone._memory import MemoryCeiling, Trimmer
from workzone.types import Decision, Image
from workzone.image_decoder import ImageDecoder

__all__ = ["DetectionService", "BatchTimes", "ImageDecoder", "ServiceObserver", "EventHandler", "answer_by",
           "answer_margin"]

log = logging.getLogger("workzone.service")

# What an answer keeps of its deadline for itself: the time to shape and send it and for the client
# to read it (the client's clock started before the server stamped the request's arrival). The
# cascade and the wait for it end this much before the deadline: a 200 after it is a late answer.
_ANSWER_MARGIN_S = 0.1
_ANSWER_MARGIN_SHARE = 0.1  # of shorter deadlines


def answer_margin(deadline_s: float) -> float:
    """Seconds of a ``deadline_s`` kept for sending the answer (see ``_ANSWER_MARGIN_S``).

    Examples:
        >>> answer_margin(2.0), answer_margin(0.5)
        (0.1, 0.05)
    """
    return min(_ANSWER_MARGIN_S, _ANSWER_MARGIN_SHARE * deadline_s)


def answer_by(arrived_at: float, deadline_s: float | None) -> float | None:
    """When the work of a request that arrived at ``arrived_at`` (``time.perf_counter()`` clock) must
    be over: its deadline less :func:`answer_margin`.

    Examples:
        >>> answer_by(10.0, 2.0), answer_by(10.0, None)
        (11.9, None)
    """
    return None if deadline_s is None else arrived_at + deadline_s - answer_margin(deadline_s)


EventHandler = Callable[[TierEvent], Awaitable[None] | None]
State = Literal["created", "starting", "ready", "failed", "stopping", "stopped"]


class ServiceObserver(Protocol):
    """What the service reports as it works (the Prometheus metrics implement it)."""

    def on_batch(self, size: int, waited_s: float) -> None: ...

    def on_decision(self, decision: Decision) -> None: ...


class BatchTimes:
    """A lane's measured batch times as a fixed cost per batch plus a cost per image (a least-squares line over
    the recent batches, newest weighted most), and what a queue of images will take in batches of a size.

    Why not seconds per image alone: on a torch device most of a small batch's time is per batch (each operator
    is a kernel launch whatever the batch size: some 700 of them for default-gpu's detector), so the share of a
    batch of 2 is many times the share of a batch of 64, and a queue that the batcher will run in full batches,
    taken at the small batches' share per image, looks many times longer than it is (a server at 250 requests/s
    refused most of them for an expected wait its batches would have met). Until the batches have varied enough
    in size to tell the two costs apart, every second counts per image (the cautious reading).

    Examples:
        >>> t = BatchTimes()
        >>> for n in (1, 2, 4, 8, 2, 1):
        ...     t.add(n, 0.020 + 0.001 * n)
        >>> round(t.seconds(256, 64), 3)  # 4 batches of 64: 4 x 20 ms + 256 x 1 ms
        0.336
    """

    def __init__(self, decay: float = 0.95) -> None:
        self.decay = decay
        self._w = self._n = self._nn = self._t = self._nt = 0.0

    def add(self, images: int, seconds: float) -> None:
        d = self.decay
        self._w, self._n, self._nn = d * self._w + 1, d * self._n + images, d * self._nn + images * images
        self._t, self._nt = d * self._t + seconds, d * self._nt + images * seconds

    def costs(self) -> tuple[float, float] | None:
        """``(seconds per batch, seconds per image)``, or None before the first batch."""
        if self._w == 0 or self._n <= 0:
            return None
        mean_n, mean_t = self._n / self._w, self._t / self._w
        var = self._nn / self._w - mean_n * mean_n
        if var < 0.5:  # the sizes barely varied: every second per image
            return 0.0, mean_t / mean_n
        per_image = min(max(0.0, (self._nt / self._w - mean_n * mean_t) / var), mean_t / mean_n)
        return max(0.0, mean_t - per_image * mean_n), per_image

    def seconds(self, images: int, batch: int) -> float | None:
        """What ``images`` take in batches of at most ``batch`` (None before the first batch)."""
        c = self.costs()
        if c is None or images <= 0:
            return None if c is None else 0.0
        return -(-images // max(1, batch)) * c[0] + images * c[1]


@dataclass(frozen=True)
class _Job:
    image: Image
    deadline: float | None  # absolute, on the time.perf_counter() clock
    on_event: EventHandler | None
    client: str | None = None  # whose image it is (the server's client address), for ClientCosts


class DetectionService:
    """Decides images with one cascade, batching concurrent callers together.

    Args:
        cascade: the (not yet started) cascade to serve.
        limits: limits every decoded image must respect.
        policy: micro-batching policy.
        default_deadline_s: deadline of a request that gives none (``None``: the pipeline's).
        max_deadline_s: cap on any deadline.
        observer: receives batch sizes and decisions (metrics).
        decode_workers: images decoded at the same time in threads (each within
            ``limits.max_decode_bytes``), when the decoder has no processes (those have their own count).
        decoder: the decode policy (default: the CPU within ``limits``; :meth:`from_config` picks it for the device).
        request_decode_cpu_s: most CPU seconds the decodes of one request may take together (in
            decoder processes; a batch shares it).
        client_costs: the measured cascade cost of each client's images; the images of a client it
            calls costly run in the costly lane (see :mod:`workzone.client_costs`). Default: costly
            past 0.2 s per image.
    """

    def __init__(self, cascade: Cascade, *, limits: ImageLimits = ImageLimits(),
                 policy: BatchPolicy = BatchPolicy(), default_deadline_s: float | None = None,
                 max_deadline_s: float | None = None, observer: ServiceObserver | None = None,
                 decode_workers: int = 2, decoder: ImageDecoder | None = None,
                 request_decode_cpu_s: float = 2.0, client_costs: ClientCosts | None = None,
                 memory: MemoryCeiling | None = None) -> None:
        self.cascade = cascade
        #: The process's resident-memory ceiling and trim mark (the server's; None: trims only when
        #: the queue runs empty).
        self.memory = memory
        self.decoder = decoder or ImageDecoder(limits=limits)
        self.request_decode_cpu_s = request_decode_cpu_s
        self._decode_slots = asyncio.Semaphore(decode_workers)
        self._trimmer = Trimmer()
        #: Smoothed seconds of cascade time per image (batch time / batch size) in the shared lane;
        #: admission uses it.
        self.seconds_per_image: float | None = None
        self._costly_seconds_per_image: float | None = None
        #: The shared lane's batch times split into per batch and per image (see BatchTimes); the expected wait
        #: uses it once the batch sizes have varied.
        self.batch_times = BatchTimes()
        self.client_costs = client_costs if client_costs is not None else ClientCosts()
        self.limits = limits
        self.default_deadline_s = default_deadline_s
        self.max_deadline_s = max_deadline_s
        self.observer = observer
        self.batcher: MicroBatcher[_Job, Decision] = MicroBatcher(self._process, policy, on_batch=self._on_batch)
        # The costly lane: images of clients whose images were measured costly, one at a time, by one
        # worker beside the shared lane's, so no other client's batch waits behind them.
        costly_policy = BatchPolicy(max_batch_size=1, max_wait_s=0.0, max_queue=policy.max_queue, workers=1,
                                    retry_after_s=policy.retry_after_s)
        self.costly_batcher: MicroBatcher[_Job, Decision] = MicroBatcher(
            functools.partial(self._process, costly=True), costly_policy, on_batch=self._on_batch)
        self.state: State = "created"
        self.load_error: str | None = None
        self._start_task: asyncio.Task[None] | None = None

    @classmethod
    def from_pipeline(cls, ref: str | Path, *, device: str = "cpu", extras: dict[str, Any] | None = None,
                      **kwargs: Any) -> "DetectionService":
        """Build from a built-in pipeline name or YAML path (validates the file; loads no weights)."""
        config, path = load_pipeline_config(ref)
        return cls.from_config(config, path.parent, device=device, extras=extras, **kwargs)

    @classmethod
    def from_config(cls, config: PipelineConfig, base_dir: Path, *, device: str = "cpu",
                    extras: dict[str, Any] | None = None, **kwargs: Any) -> "DetectionService":
        """Build from a validated config whose relative paths resolve against ``base_dir`` (loads no weights).

        ``engine_process=True`` runs the cascade in a process of its own (:mod:`workzone.cascade_process`), or in
        the running one at ``engine_attach`` (an ``EngineAddress``); the decoder passed with it should be made
        ``for_engine``.
        """
        gpu_decode = kwargs.pop("gpu_decode", "nvjpeg")
        engine = kwargs.pop("engine_process", False)
        attach = kwargs.pop("engine_attach", None)
        limits = kwargs.get("limits", ImageLimits())
        if "decoder" not in kwargs:
            kwargs["decoder"] = ImageDecoder(device, limits=limits, gpu_decode=gpu_decode, for_engine=engine)
        if engine:
            from workzone.cascade_process import CascadeProcess

            cascade: Any = CascadeProcess(config, base_dir=base_dir, device=device, extras=extras,
                                          gpu_decode=gpu_decode, limits=limits, attach=attach)
        else:
            cascade = Cascade.from_config(config, base_dir=base_dir, device=device, extras=extras)
        return cls(cascade, **kwargs)

    @property
    def config(self) -> PipelineConfig:
        return self.cascade.config

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, *, serving: bool = True) -> None:
        """Load and warm up every stage, then accept work. Raises what the cascade raises.

        Args:
            serving: the micro-batcher will serve (a server, a miner): every batch shape it can form is
                run first. The sync API, whose callers' batches go past it, leaves this off (a
                ``torch.compile`` of a bucket no caller sends costs seconds to minutes).
        """
        self.state = "starting"
        try:
            if self.decoder.processes is not None and not self.decoder.processes.started:
                await self.decoder.processes.start()
            # Every batch the batcher can form runs on warmed shapes: a compile inside a served batch
            # would hold its requests for seconds to minutes.
            await self.cascade.start(largest_batch=self.batcher.policy.max_batch_size if serving else None)
        except BaseException as exc:
            self.state = "failed"
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise
        self.batcher.start()
        self.costly_batcher.start()
        self.state = "ready"

    def start_in_background(self) -> asyncio.Task[None]:
        """Start loading without waiting (the server answers /healthz meanwhile, /readyz says 503)."""

        async def _run() -> None:
            try:
                await self.start()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - recorded in load_error and shown by /readyz
                log.exception("the pipeline failed to load; /readyz will report it")

        self._start_task = asyncio.create_task(_run(), name="workzone-pipeline-start")
        return self._start_task

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.cascade.ready

    def begin_shutdown(self) -> None:
        """Stop accepting new work (readiness turns false); queued work still finishes."""
        if self.state in ("ready", "starting", "created"):
            self.state = "stopping"
        self.batcher.stop_accepting()
        self.costly_batcher.stop_accepting()

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop accepting, finish queued work (up to ``timeout`` seconds), then free the stages."""
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            await asyncio.gather(self._start_task, return_exceptions=True)
        self.state = "stopping"
        await asyncio.gather(self.batcher.aclose(timeout), self.costly_batcher.aclose(timeout))
        try:
            await self.cascade.aclose()
        finally:
            self.decoder.close()
        self.state = "stopped"

    # -- inputs ----------------------------------------------------------------------------------
    def decode_budget(self) -> DecodeBudget:
        """A fresh decode budget for one request (every image of a batch draws on it)."""
        return DecodeBudget(self.request_decode_cpu_s)

    async def probe(self, data: bytes, source: str = "<bytes>", *, end: float | None = None,
                    budget: DecodeBudget | None = None) -> ImageHeader:
        """Check the image's header against every limit and say what its pixels will weigh, without
        decoding a pixel (through the decoder, under ``budget``, like :meth:`decode`).

        Raises:
            InvalidImageError: not an image, or over a limit (``DecodeBudgetExceeded``: over the budget).
            DeadlineExceeded: no decoder came free before ``end``.
        """
        if self.decoder.processes is not None:
            return await self.decoder.probe_bytes(data, source, budget or self.decode_budget(), end)
        return await self._in_slot(self.decoder.probe_bytes(data, source, budget or self.decode_budget(), end), end)

    async def decode(self, data: bytes, source: str = "<bytes>", *, end: float | None = None,
                     budget: DecodeBudget | None = None, cost_s: float = 0.0,
                     memory: Callable[[], ContextManager[None]] | None = None) -> Image:
        """Decode encoded image bytes through the service's decoder (the memory and work guards run on
        the header first): in its processes, stopped past ``budget`` and the per-image budget, or in
        a thread, ``decode_workers`` at a time.

        Args:
            data: the encoded image.
            source: label for reports.
            end: absolute deadline (``time.perf_counter()`` clock) for the decode.
            budget: the request's decode budget (a fresh one when omitted).
            cost_s: the header's decode cost estimate (:meth:`probe`): costly images use their own,
                lower-priority decoder process.
            memory: held while the decode runs, from when a decoder is free for it (the server's
                reservation of the decode's memory; it may refuse with ``Overloaded``).

        Raises:
            InvalidImageError: not an image, truncated, or over a limit (``DecodeBudgetExceeded``:
                over the CPU budget).
            DeadlineExceeded: no decoder came free, or the decode did not finish, before ``end``.
        """
        size = self.decoder.defers(data)
        if size is not None:
            from workzone.accel.device_image import EncodedImage

            # Decoded with its batch, on the device (see _decode_batch): the request reads only the header.
            return EncodedImage(bytes(data), source, size)
        work = self.decoder.decode_bytes(data, source, budget or self.decode_budget(), end, cost_s, memory)
        if self.decoder.processes is not None:
            return await work
        return await self._in_slot(work, end, memory)

    async def _in_slot(self, work: Awaitable[Any], end: float | None,
                       memory: Callable[[], ContextManager[None]] | None = None) -> Any:
        wait = None if end is None else max(0.0, end - time.perf_counter())
        try:
            await asyncio.wait_for(self._decode_slots.acquire(), timeout=wait)
        except asyncio.TimeoutError:
            if asyncio.iscoroutine(work):
                work.close()
            raise DeadlineExceeded("decode", "the deadline passed while the image waited to be decoded") from None
        try:
            with memory() if memory is not None else contextlib.nullcontext():
                return await work
        except BaseException:
            if asyncio.iscoroutine(work):
                work.close()  # refused before it started (a no-op once it ran)
            raise
        finally:
            self._decode_slots.release()

    async def run(self, images: Sequence[Image], *, deadline_s: float | None = None,
                  on_event: Callable[[TierEvent], Any] | None = None, run_all: bool = False) -> list[Decision]:
        """Decide a batch the caller formed itself (batch jobs, the sync API): straight to the cascade,
        past the micro-batcher, which exists to gather concurrent single requests."""
        self.check_ready()
        decisions = await self.cascade.run(images, deadline_s=deadline_s, on_event=on_event, run_all=run_all)
        if self.observer is not None:
            for d in decisions:
                self.observer.on_decision(d)
        return decisions

    def prior_decision(self, source: str, why: str) -> Decision:
        """The answer when no stage could run in time: the pipeline's prior, marked degraded."""
        decision = self.cascade.prior_decision(source, why)
        if self.observer is not None:
            self.observer.on_decision(decision)
        return decision

    def resolve_deadline(self, requested: float | None) -> float | None:
        """The deadline a request runs under: its own, else the default, capped by the maximum."""
        deadline = requested if requested is not None else self.default_deadline_s
        if deadline is None:
            deadline = self.config.deadline_s
        if self.max_deadline_s is not None:
            deadline = self.max_deadline_s if deadline is None else min(deadline, self.max_deadline_s)
        return deadline

    # -- detection -------------------------------------------------------------------------------
    def expected_wait_s(self, queued: int) -> float:
        """Seconds an image arriving behind ``queued`` others can expect to wait. Until a batch has
        been timed, one image running plus two batches' worth (within the queue) are free and more
        is taken as too long: a cold server under a burst must not admit what it cannot answer."""
        policy = self.batcher.policy
        if self.seconds_per_image is None:
            cold = 1 + min(policy.max_queue, 2 * policy.max_batch_size * policy.workers)
            return 0.0 if queued < cold else float("inf")
        linear = queued * self.seconds_per_image / policy.workers
        costs = self.batch_times.costs()
        if costs is None or costs[0] == 0.0:
            return linear
        # The queue runs in full batches: their fixed cost once per batch, not once per image.
        batched = self.batch_times.seconds(queued, policy.max_batch_size)
        return min(linear, batched / policy.workers) if batched is not None else linear

    def check_ready(self) -> None:
        """Raise :class:`NotReady` while the pipeline is loading or failed to load (no details: they
        may name model paths; ``/readyz`` shows them to authenticated callers)."""
        if self.state in ("created", "starting", "failed"):
            what = "is still loading" if self.load_error is None else "failed to load"
            raise NotReady(f"the pipeline {what}; retry when /readyz answers 200",
                           retry_after_s=self.batcher.policy.retry_after_s)

    def submit(self, images: Sequence[Image], *, deadline_s: float | None = None,
               on_event: EventHandler | Sequence[EventHandler | None] | None = None,
               arrived_at: float | None = None, client: str | None = None) -> list[asyncio.Future[Decision]]:
        """Queue images for the cascade without waiting; all are queued or none is.

        Args:
            images: decoded images.
            deadline_s: seconds from arrival (already resolved, see :meth:`resolve_deadline`).
            arrived_at: when the request arrived (``time.perf_counter()`` clock); now when omitted.
                Time spent reading and decoding the request counts against its deadline.
            on_event: one handler for every image, or one per image, called after each tier.
            client: who sent them (the server's client address): their measured cost is charged to
                it, and the images of a client measured costly run in the costly lane.

        Raises:
            NotReady: the pipeline is not loaded yet (or failed to load).
            Overloaded: the queue cannot take them.
            ShuttingDown: the service is stopping.
        """
        self.check_ready()
        start = time.perf_counter() if arrived_at is None else arrived_at
        end = answer_by(start, deadline_s)
        if on_event is None or callable(on_event):
            handlers: Sequence[EventHandler | None] = [on_event] * len(images)
        else:
            handlers = list(on_event)
        pixels = max((img.width * img.height for img in images), default=0)
        lane = self.costly_batcher if self.client_costs.is_costly(client, pixels) else self.batcher
        return lane.submit_many([_Job(img, end, h, client) for img, h in zip(images, handlers)])

    async def detect(self, image: Image, *, deadline_s: float | None = None,
                     on_event: EventHandler | None = None, arrived_at: float | None = None,
                     client: str | None = None) -> Decision:
        """Decide one image (it shares a batch with concurrent callers), within its deadline."""
        return (await self.detect_many([image], deadline_s=deadline_s, arrived_at=arrived_at, on_event=on_event,
                                       client=client))[0]

    async def detect_many(self, images: Sequence[Image], *, deadline_s: float | None = None,
                          arrived_at: float | None = None, on_event: EventHandler | None = None,
                          client: str | None = None) -> list[Decision]:
        """Decide several images; they are queued together and usually share a batch.

        The answer never comes after the deadline: the cascade stops slow tiers before it (keeping
        :func:`answer_by`'s margin to send the answer), and if the batch holding these images has not
        answered by then (the cores are saturated, a stage runs on past its timeout), each image gets
        the prior, marked degraded.
        """
        start = time.perf_counter() if arrived_at is None else arrived_at
        futures = self.submit(images, deadline_s=deadline_s, arrived_at=start, on_event=on_event, client=client)
        if deadline_s is None:
            return list(await asyncio.gather(*futures))
        # The cascade stops at answer_by(); half the margin more lets a batch cut there finish
        # shaping its answers (else the prior would race them), the other half sends the answer.
        wait = max(0.0, start + deadline_s - answer_margin(deadline_s) / 2 - time.perf_counter())
        done, _ = await asyncio.wait(futures, timeout=wait)
        out = []
        for img, fut in zip(images, futures):
            if fut in done:
                out.append(fut.result())
            else:
                fut.cancel()  # a batch not started skips it; a running one's answer is dropped
                out.append(self.prior_decision(img.source, "the deadline passed before the cascade answered"))
        return out

    async def _process(self, jobs: list[_Job], costly: bool = False) -> list[Decision]:
        # Work that cannot finish by its deadline (it passed while the image was queued, or less is
        # left than the batch is expected to take) is answered at once (the prior, marked degraded)
        # instead of holding the batch to a deadline it cannot meet, or taking CPU from work that can.
        now = time.perf_counter()
        spi = self._costly_seconds_per_image if costly else self.seconds_per_image
        expected = 0.0 if spi is None else spi * len(jobs)
        if not costly and spi is not None:
            expected = min(expected, self.batch_times.seconds(len(jobs), len(jobs)) or expected)
        expired = [k for k, j in enumerate(jobs) if j.deadline is not None and j.deadline - now <= expected]
        if expired:
            out: list[Decision | None] = [None] * len(jobs)
            for k in expired:
                why = ("the deadline passed while the image was queued" if jobs[k].deadline <= now  # type: ignore[operator]
                       else "the deadline would pass before the cascade answered: dropped before it started")
                out[k] = self.prior_decision(jobs[k].image.source, why)
            live = [k for k in range(len(jobs)) if out[k] is None]
            if live:
                for k, d in zip(live, await self._run_jobs([jobs[k] for k in live], costly)):
                    out[k] = d
            return [d for d in out if d is not None]
        return await self._run_jobs(jobs, costly)

    async def _decode_batch(self, jobs: list[_Job]) -> tuple[list[_Job], dict[int, Decision]]:
        """Decode the batch's deferred JPEGs in one call; a file that fails is answered with the prior
        (degraded, naming why) instead of failing its batch."""
        from workzone.accel.device_image import EncodedImage

        pending = [k for k, j in enumerate(jobs) if isinstance(j.image, EncodedImage)]
        if not pending:
            return jobs, {}
        imgs = [jobs[k].image for k in pending]
        decoded = await asyncio.to_thread(self.decoder.decode_each, [im.data for im in imgs],  # type: ignore[attr-defined]
                                          [im.source for im in imgs])
        jobs = list(jobs)
        failed: dict[int, Decision] = {}
        for k, img in zip(pending, decoded):
            if isinstance(img, Exception):
                failed[k] = self.prior_decision(jobs[k].image.source, f"the image could not be decoded: {img}")
            else:
                jobs[k] = _Job(img, jobs[k].deadline, jobs[k].on_event, jobs[k].client)
        return jobs, failed

    async def _run_jobs(self, jobs: list[_Job], costly: bool) -> list[Decision]:
        if getattr(self.cascade, "decodes_encoded", False):  # an engine process decodes the deferred JPEGs
            return await self._run_decoded(jobs, costly)
        jobs, failed = await self._decode_batch(jobs)
        if failed:
            live = [k for k in range(len(jobs)) if k not in failed]
            out = dict(failed)
            if live:
                out.update(zip(live, await self._run_decoded([jobs[k] for k in live], costly)))
            return [out[k] for k in range(len(jobs))]
        return await self._run_decoded(jobs, costly)

    async def _run_decoded(self, jobs: list[_Job], costly: bool) -> list[Decision]:
        now = time.perf_counter()
        # A batch runs under its tightest deadline, so nobody in it is answered late.
        ends = [j.deadline for j in jobs if j.deadline is not None]
        remaining = None if not ends else max(0.0, min(ends) - now)
        handlers = [j.on_event for j in jobs]

        async def dispatch(ev: TierEvent) -> None:
            handler = handlers[ev.index]
            if handler is None:
                return
            try:
                res = handler(ev)
                if asyncio.iscoroutine(res):
                    await res
            except Exception:  # noqa: BLE001 - a broken listener must not fail the batch
                log.exception("an on_event handler failed")

        listen = dispatch if any(h is not None for h in handlers) else None
        cold = self.cascade.cold_runs
        timed = getattr(self.cascade, "run_timed", None)  # an engine process says what the images cost it
        compute_s: float | None = None
        t = time.perf_counter()
        if timed is not None:
            decisions, compute_s = await timed([j.image for j in jobs], deadline_s=remaining, on_event=listen)
        else:
            decisions = await self.cascade.run([j.image for j in jobs], deadline_s=remaining, on_event=listen)
        took = time.perf_counter() - t
        if self.cascade.cold_runs != cold:
            # A stage met a shape for the first time during it (a compile, a kernel choice; this batch's
            # or one beside it): its time is not what the images cost. Charged, it would send every
            # client of the batch to the one-image lane and make admission expect seconds per image.
            log.warning("a batch of %d image(s) ran while a stage met a shape for the first time (%.2f s): not "
                        "charged to its clients", len(jobs), took)
        else:
            self._charge(jobs, took, costly, compute_s)
        if self.observer is not None:
            for d in decisions:
                self.observer.on_decision(d)
        if self.batcher.depth == 0:  # the queue ran empty: give freed memory back to the OS (off the loop)
            self._trimmer.maybe_trim(in_thread=True)
        elif self.memory is not None:  # a queue that never runs empty: trimmed past the mark
            self.memory.tidy()
        return decisions

    def _charge(self, jobs: list[_Job], took: float, costly: bool, compute_s: float | None = None) -> None:
        """A batch's measured time: to its clients (by pixels), and to its lane's seconds per image. ``compute_s``
        (an engine's own time for the batch) is what the clients are charged when given: the wall time also holds
        the wait behind other servers' batches, which would make a client of small batches look costly."""
        self.client_costs.charge([j.client for j in jobs], [j.image.width * j.image.height for j in jobs],
                                 took if compute_s is None else compute_s)
        per = took / len(jobs)
        spi = self._costly_seconds_per_image if costly else self.seconds_per_image
        spi = per if spi is None else 0.8 * spi + 0.2 * per
        if costly:
            self._costly_seconds_per_image = spi
        else:
            self.seconds_per_image = spi
            self.batch_times.add(len(jobs), took)

    def _on_batch(self, size: int, waited_s: float) -> None:
        if self.observer is not None:
            self.observer.on_batch(size, waited_s)

    # -- description -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The loaded pipeline, for ``GET /v1/pipeline``."""
        cfg = self.config
        tiers = []
        for tier_cfg, stages in self.cascade.tiers:
            tiers.append({
                "name": tier_cfg.name,
                "stages": [{**s.describe(), "timeout_s": self._timeout(s.name),
                            "breaker": _breaker_state(s)} for s in stages],
                "fusion": tier_cfg.fusion.model_dump(mode="json"),
                "exit": tier_cfg.exit.model_dump(mode="json"),
            })
        return {"name": cfg.name, "description": cfg.description, "version": cfg.version,
                "deadline_s": cfg.deadline_s, "state": self.state, "ready": self.ready,
                "load_error": self.load_error, "tiers": tiers}

    def _timeout(self, stage: str) -> float | None:
        for tier in self.config.tiers:
            for spec in tier.stages:
                if spec.name == stage:
                    return spec.timeout_s
        return None


def _breaker_state(stage: Any) -> str | None:
    breaker = getattr(stage, "breaker", None)
    if breaker is None:
        return None
    state = getattr(breaker, "state", None)
    return None if state is None else str(getattr(state, "value", state))
