"""The detection service: decode, queue into the micro-batcher, run the cascade under deadlines.

It is core: it knows no HTTP routes (the server's routes, the SN72 miner and batch jobs all drive
it) and imports no web framework. One instance owns one :class:`~workzone.cascade.Cascade` for the life of the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, Protocol, Sequence

from workzone.batching import BatchPolicy, MicroBatcher
from workzone.cascade import Cascade, TierEvent
from workzone.config.loader import load_pipeline_config
from workzone.config.schema import PipelineConfig
from workzone.io.images import ImageLimits, decode_image
from workzone.errors import NotReady
from workzone.types import Decision, Image

__all__ = ["DetectionService", "ServiceObserver", "EventHandler"]

log = logging.getLogger("workzone.service")

EventHandler = Callable[[TierEvent], Awaitable[None] | None]
State = Literal["created", "starting", "ready", "failed", "stopping", "stopped"]


class ServiceObserver(Protocol):
    """What the service reports as it works (the Prometheus metrics implement it)."""

    def on_batch(self, size: int, waited_s: float) -> None: ...

    def on_decision(self, decision: Decision) -> None: ...


@dataclass(frozen=True)
class _Job:
    image: Image
    deadline: float | None  # absolute, on the time.perf_counter() clock
    on_event: EventHandler | None


class DetectionService:
    """Decides images with one cascade, batching concurrent callers together.

    Args:
        cascade: the (not yet started) cascade to serve.
        limits: limits every decoded image must respect.
        policy: micro-batching policy.
        default_deadline_s: deadline of a request that gives none (``None``: the pipeline's).
        max_deadline_s: cap on any deadline.
        observer: receives batch sizes and decisions (metrics).
    """

    def __init__(self, cascade: Cascade, *, limits: ImageLimits = ImageLimits(),
                 policy: BatchPolicy = BatchPolicy(), default_deadline_s: float | None = None,
                 max_deadline_s: float | None = None, observer: ServiceObserver | None = None) -> None:
        self.cascade = cascade
        self.limits = limits
        self.default_deadline_s = default_deadline_s
        self.max_deadline_s = max_deadline_s
        self.observer = observer
        self.batcher: MicroBatcher[_Job, Decision] = MicroBatcher(self._process, policy, on_batch=self._on_batch)
        self.state: State = "created"
        self.load_error: str | None = None
        self._start_task: asyncio.Task[None] | None = None

    @classmethod
    def from_pipeline(cls, ref: str | Path, *, device: str = "cpu", extras: dict[str, Any] | None = None,
                      **kwargs: Any) -> "DetectionService":
        """Build from a built-in pipeline name or YAML path (validates the file; loads no weights)."""
        config, path = load_pipeline_config(ref)
        return cls(Cascade.from_config(config, base_dir=path.parent, device=device, extras=extras), **kwargs)

    @property
    def config(self) -> PipelineConfig:
        return self.cascade.config

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm up every stage, then accept work. Raises what the cascade raises."""
        self.state = "starting"
        try:
            await self.cascade.start()
        except BaseException as exc:
            self.state = "failed"
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise
        self.batcher.start()
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

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop accepting, finish queued work (up to ``timeout`` seconds), then free the stages."""
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            await asyncio.gather(self._start_task, return_exceptions=True)
        self.state = "stopping"
        await self.batcher.aclose(timeout)
        await self.cascade.aclose()
        self.state = "stopped"

    # -- inputs ----------------------------------------------------------------------------------
    async def decode(self, data: bytes, source: str = "<bytes>") -> Image:
        """Decode encoded image bytes in a worker thread (pixel guards run on the header first).

        Raises:
            InvalidImageError: not an image, truncated, or over a limit.
        """
        return await asyncio.to_thread(decode_image, data, limits=self.limits, source=source)

    def resolve_deadline(self, requested: float | None) -> float | None:
        """The deadline a request runs under: its own, else the default, capped by the maximum."""
        deadline = requested if requested is not None else self.default_deadline_s
        if deadline is None:
            deadline = self.config.deadline_s
        if self.max_deadline_s is not None:
            deadline = self.max_deadline_s if deadline is None else min(deadline, self.max_deadline_s)
        return deadline

    # -- detection -------------------------------------------------------------------------------
    def submit(self, images: Sequence[Image], *, deadline_s: float | None = None,
               on_event: EventHandler | Sequence[EventHandler | None] | None = None) -> list[asyncio.Future[Decision]]:
        """Queue images for the cascade without waiting; all are queued or none is.

        Args:
            images: decoded images.
            deadline_s: seconds from now (already resolved, see :meth:`resolve_deadline`).
            on_event: one handler for every image, or one per image, called after each tier.

        Raises:
            NotReady: the pipeline is not loaded yet (or failed to load).
            Overloaded: the queue cannot take them.
            ShuttingDown: the service is stopping.
        """
        if self.state in ("created", "starting", "failed"):
            what = "is still loading" if self.load_error is None else f"failed to load ({self.load_error})"
            raise NotReady(f"the pipeline {what}; retry when /readyz answers 200",
                           retry_after_s=self.batcher.policy.retry_after_s)
        end = None if deadline_s is None else time.perf_counter() + deadline_s
        if on_event is None or callable(on_event):
            handlers: Sequence[EventHandler | None] = [on_event] * len(images)
        else:
            handlers = list(on_event)
        return self.batcher.submit_many([_Job(img, end, h) for img, h in zip(images, handlers)])

    async def detect(self, image: Image, *, deadline_s: float | None = None,
                     on_event: EventHandler | None = None) -> Decision:
        """Decide one image (it shares a batch with concurrent callers)."""
        (future,) = self.submit([image], deadline_s=deadline_s, on_event=on_event)
        return await future

    async def detect_many(self, images: Sequence[Image], *, deadline_s: float | None = None) -> list[Decision]:
        """Decide several images; they are queued together and usually share a batch."""
        return list(await asyncio.gather(*self.submit(images, deadline_s=deadline_s)))

    async def _process(self, jobs: list[_Job]) -> list[Decision]:
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
        decisions = await self.cascade.run([j.image for j in jobs], deadline_s=remaining, on_event=listen)
        if self.observer is not None:
            for d in decisions:
                self.observer.on_decision(d)
        return decisions

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
