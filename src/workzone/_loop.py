"""An asyncio event loop running in a daemon thread, worker threads that yield the CPU to the loop, and the GIL
switch interval that lets a server's compute thread win the GIL back from a busy loop.

The sync API and the miner both host the async cascade from code that is not on its loop (plain
Python callers; the axon's own uvicorn loop). Stages and their clients are bound to this loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Coroutine, TypeVar

__all__ = ["LoopThread", "lower_priority_executor", "gil_switch_interval_s", "CUDA_SWITCH_INTERVAL_S"]

#: The GIL switch interval of a server on a CUDA device: 0.5 ms and 0.1 ms were measured against Python's 5 ms with
#: the event loop busy 50 % and 90 % (benchmarks/results/served_gap_cuda.md); 0.5 ms is the longer of the two, as
#: each switch also costs the loop, whose share of that cost the measurement does not show.
CUDA_SWITCH_INTERVAL_S = 0.0005

T = TypeVar("T")


class LoopThread:
    """Owns an event loop running forever in a daemon thread named ``name``."""

    def __init__(self, name: str = "workzone-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on this loop and block the calling thread for the result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this loop and await it from another event loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


def _lower_own_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: nice is per thread, and the threads
    a thread starts inherit it). Where that is not possible the thread keeps its priority."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (OSError, AttributeError):  # not Linux, or not allowed
        pass


def lower_priority_executor(nice: int) -> ThreadPoolExecutor:
    """A thread pool whose threads run ``nice`` steps below the caller, for an event loop's default
    executor (``asyncio.to_thread``, where the stages load and run).

    Why: on a server with few cores, the stages' work (and the ONNX Runtime threads a stage starts
    from these threads while it loads: they inherit the priority) took the CPU the event loop needs to
    admit and refuse requests; at a lower priority it gets every idle cycle, and the loop gets the
    CPU within a scheduler tick when it has something to do.
    """
    return ThreadPoolExecutor(thread_name_prefix="workzone-compute", initializer=_lower_own_priority,
                              initargs=(nice,))


def gil_switch_interval_s(device: str, override_ms: float | None = None) -> float | None:
    """The GIL switch interval (seconds) a server on ``device`` sets: ``override_ms`` when given, 0.5 ms on a CUDA
    device, else None (Python's own). Why: the torch path's compute thread releases the GIL at every operator it
    dispatches and waits up to the interval to win it back from an event loop busy with requests.

    Examples:
        >>> gil_switch_interval_s("cuda:1"), gil_switch_interval_s("cpu"), gil_switch_interval_s("cpu", 2.0)
        (0.0005, None, 0.002)
    """
    if override_ms is not None:
        return override_ms / 1000
    return CUDA_SWITCH_INTERVAL_S if device.startswith("cuda") else None
