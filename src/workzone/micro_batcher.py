"""Adaptive micro-batching in front of the cascade.

Requests arrive one image at a time; the cascade (and a GPU tier most of all) is much faster per
image on full batches. The :class:`MicroBatcher` holds a bounded queue of jobs and a few worker
tasks; a worker takes the first waiting job, then waits a short, load-dependent time for more
before it runs the batch:

* at low load (no second job expected soon) it does not wait at all, so a lone request pays no
  batching latency;
* under load it waits up to the time it expects to need to fill the batch, never more than
  ``max_wait_s`` (the expected time comes from an exponential moving average of the gap between
  arrivals);
* while a batch runs, new jobs queue and the next batch starts full.

The queue is bounded: :meth:`MicroBatcher.submit` refuses at once with :class:`Overloaded` when it
is full (the server answers 429 with ``Retry-After``), and with :class:`ShuttingDown` once
:meth:`MicroBatcher.aclose` has been called, which drains what was already queued before it
returns.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

from workzone.errors import ConfigError, Overloaded, ShuttingDown

__all__ = ["MicroBatcher", "BatchPolicy"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchPolicy:
    """How batches form.

    Attributes:
        max_batch_size: most jobs run together.
        max_wait_s: longest a worker waits for a batch to fill once it holds one job.
        max_queue: most jobs waiting (not counting those running); more are refused.
        workers: batches that may run at the same time (1 keeps one accelerator busy without
            oversubscribing it; 2 overlaps decoding and I/O-bound tiers).
        retry_after_s: what refused callers are told to wait.
    """

    max_batch_size: int = 16
    max_wait_s: float = 0.005
    max_queue: int = 256
    workers: int = 1
    retry_after_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size: expected >= 1, got {self.max_batch_size}")
        if self.max_wait_s < 0:
            raise ConfigError(f"max_wait_s: expected >= 0, got {self.max_wait_s}")
        if self.max_queue < 1:
            raise ConfigError(f"max_queue: expected >= 1, got {self.max_queue}")
        if self.workers < 1:
            raise ConfigError(f"workers: expected >= 1, got {self.workers}")


@dataclass
class _Job(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.perf_counter)


BatchFn = Callable[[list[T]], Awaitable[Sequence[R]]]


class MicroBatcher(Generic[T, R]):
    """Groups concurrently submitted items into batches for ``process``.

    Args:
        process: coroutine function called with a list of items; returns one result per item, in
            order. If it raises, every job of that batch gets the exception.
        policy: batch size, wait, queue bound and worker count.
        on_batch: optional callback given each batch's size and the seconds its oldest job waited
            (the server feeds its metrics from it).

    Examples:
        >>> async def double(xs): return [2 * x for x in xs]
        >>> async def main():
        ...     async with MicroBatcher(double) as b:
        ...         return await asyncio.gather(*(b.submit(i) for i in range(3)))
        >>> asyncio.run(main())
        [0, 2, 4]
    """

    def __init__(self, process: BatchFn, policy: BatchPolicy | None = None,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.process = process
        self.policy = policy or BatchPolicy()
        self.on_batch = on_batch
        self._queue: deque[_Job[T, R]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._accepting = False
        self._running = 0
        self._gap_ewma: float | None = None  # seconds between arrivals, smoothed
        self._last_arrival: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker tasks on the running event loop."""
        if self._workers:
            return
        self._wakeup = asyncio.Event()
        self._accepting = True
        self._workers = [asyncio.create_task(self._work(), name=f"workzone-batcher-{i}")
                         for i in range(self.policy.workers)]

    def stop_accepting(self) -> None:
        """Refuse new work from now on (queued and running jobs still finish)."""
        self._accepting = False
        if self._wakeup is not None:
            self._wakeup.set()

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop accepting, finish every queued and running job, then stop the workers.

        Args:
            timeout: seconds to wait for the queue to drain; jobs still waiting after it fail
                with :class:`ShuttingDown`.
        """
        self.stop_accepting()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._workers = []
        while self._queue:  # only left when the drain timed out
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the service stopped before this request ran"))

    async def __aenter__(self) -> "MicroBatcher[T, R]":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- state ---------------------------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def depth(self) -> int:
        """Jobs waiting for a worker."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Jobs inside a running batch."""
        return self._running

    # -- submission ----------------------------------------------------------------------------
    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue one item; returns the future of its result.

        Raises:
            Overloaded: the queue is full.
            ShuttingDown: the batcher is not accepting work.
        """
        return self.submit_many([item])[0]

    def submit_many(self, items: Sequence[T]) -> list[asyncio.Future[R]]:
        """Queue several items at once, all or none (so a batch request is never half-refused).

        Raises:
            Overloaded: the queue cannot take all of them.
            ShuttingDown: the batcher is not accepting work.
        """
        if not self._accepting or self._wakeup is None:
            raise ShuttingDown(retry_after_s=self.policy.retry_after_s)
        if len(self._queue) + len(items) > self.policy.max_queue:
            raise Overloaded(len(self._queue), self.policy.max_queue, self.policy.retry_after_s)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            self._note_arrival()
            job: _Job[T, R] = _Job(item, loop.create_future())
            self._queue.append(job)
            futures.append(job.future)
        self._wakeup.set()
        return futures

    def _note_arrival(self) -> None:
        now = time.perf_counter()
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self._gap_ewma = gap if self._gap_ewma is None else 0.8 * self._gap_ewma + 0.2 * gap
        self._last_arrival = now

    def current_wait_s(self, held: int) -> float:
        """How long a worker holding ``held`` jobs waits for the batch to fill, given recent load."""
        p = self.policy
        if held >= p.max_batch_size or p.max_wait_s == 0 or self._gap_ewma is None:
            return 0.0
        if self._gap_ewma > p.max_wait_s:  # the next arrival is not expected in time: go now
            return 0.0
        return min(p.max_wait_s, self._gap_ewma * (p.max_batch_size - held))

    # -- workers -------------------------------------------------------------------------------
    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                if not self._accepting:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await self._collect()
            if batch:
                await self._run(batch)

    async def _collect(self) -> list[_Job[T, R]]:
        assert self._wakeup is not None
        p = self.policy
        batch = [self._queue.popleft()]
        wait = self.current_wait_s(1)
        end = time.perf_counter() + wait
        while len(batch) < p.max_batch_size:
            while self._queue and len(batch) < p.max_batch_size:
                batch.append(self._queue.popleft())
            remaining = end - time.perf_counter()
            if len(batch) >= p.max_batch_size or remaining <= 0 or not self._accepting:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                pass
        # A caller that gave up (client disconnected) cancelled its future: skip its work.
        return [j for j in batch if not j.future.done()]

    async def _run(self, batch: list[_Job[T, R]]) -> None:
        self._running += len(batch)
        oldest = min(j.enqueued for j in batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - oldest)
        try:
            results = await self.process([j.item for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            for j in batch:
                if not j.future.done():
                    j.future.set_exception(ShuttingDown("the service stopped while this request ran"))
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
            for j in batch:
                if not j.future.done():
                    j.future.set_exception(exc)
        else:
            for j, r in zip(batch, results):
                if not j.future.done():
                    j.future.set_result(r)
        finally:
            self._running -= len(batch)
