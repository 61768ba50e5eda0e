"""Give memory back to the operating system after load (glibc only; a no-op elsewhere), keep what
was loaded out of the garbage collector's way, and watch the process's resident memory.

Under load, decoding and the cascade's worker threads allocate from several glibc malloc arenas;
freed blocks stay in the process (RSS does not come down after the load). The server limits the
arenas at start and trims the heap once its queue runs empty.

Under a queue that never runs empty that trim never comes, and the heaps grow: glibc's mmap threshold
is dynamic (it rises from 128 KiB to the size of the largest mapped block freed, up to 32 MiB), so
decoded images and the cascade's tensors come from the arena heaps, where the freed space between the
live blocks of hundreds of queued requests is reused only in part and not given back. Under 500 clients
without a deadline a server went from 0.35 to 3.25 GB of RSS in 15 s with at most 256 MiB of bodies and
pixels held (benchmarks/results/reliability.md, "Memory under overload"). The space is free, not live:
``malloc_trim`` gives it back. :class:`MemoryCeiling` trims while the resident size is above a mark,
whatever the queue, and tells admission when it reaches its ceiling. :func:`fix_mmap_threshold` (off
by default) avoids the growth instead, at the price of a page fault per fresh page of every large
allocation: 45-55 % more CPU per image for the default pipeline.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Callable

__all__ = ["limit_malloc_arenas", "fix_mmap_threshold", "release_free_memory", "resident_bytes", "Trimmer",
           "MemoryCeiling", "freeze_loaded_objects", "MAX_MMAP_THRESHOLD"]

log = logging.getLogger("workzone.server")

_M_ARENA_MAX = -8  # mallopt parameter numbers in glibc's malloc.h
_M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``): mallopt refuses more.
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at ``n`` (fewer, fuller arenas fragment less). True if applied."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, n))


def fix_mmap_threshold(nbytes: int) -> bool:
    """Serve every allocation of ``nbytes`` or more from its own mapping, returned to the OS when freed,
    and stop glibc from raising that threshold (see the module docstring). True if applied.

    Args:
        nbytes: the threshold, at most :data:`MAX_MMAP_THRESHOLD` (mallopt refuses more).
    """
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))


def resident_bytes() -> int | None:
    """The process's resident set size in bytes (``/proc/self/statm``), or None where there is none."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None



def release_free_memory() -> bool:
    """Return freed heap memory to the OS (``malloc_trim(0)``). True if anything was released."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


#: Seconds the trimmer thread waits for another trim before it ends.
_TRIMMER_IDLE_S = 30.0


class Trimmer:
    """Calls :func:`release_free_memory` when asked, at most once per ``every_s`` seconds; in its own thread
    when asked to (:meth:`trim_in_thread`)."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self._last = 0.0
        self._wake = threading.Condition()
        self._due: list[Callable[[], None] | None] = []  # trims asked for and not started (under _wake)
        self._thread: threading.Thread | None = None  # the trimmer, while it waits for work (under _wake)

    def claim(self, every_s: float | None = None) -> bool:
        """True (and the time noted) when a trim is due: none in the last ``every_s`` (default: the trimmer's)."""
        now = time.monotonic()
        if now - self._last < (self.every_s if every_s is None else every_s):
            return False
        self._last = now
        return True

    def maybe_trim(self, in_thread: bool = False) -> bool:
        """Trim when one is due; ``in_thread``: in the trimmer's thread, so that an event loop calling this
        does not stop for it (tens of milliseconds in a process running the torch detector on the 2-core
        machine: benchmarks/results/http_cold_shapes_cpu.md). Returns whether a trim was done or started."""
        if not self.claim():
            return False
        if not in_thread:
            return release_free_memory()
        self.trim_in_thread()
        return True

    def trim_in_thread(self, then: Callable[[], None] | None = None) -> None:
        """Trim in the trimmer's thread (``then`` called there after it), whether or not one is due.

        One thread for the trims of a busy spell, woken, not started each time: a start waits until the new
        thread runs, which on loaded cores held the event loop (up to 4 trims a second). It runs at the
        caller's priority: one below it could hold an arena's lock while other processes take the CPU, and
        the loop's next allocation would wait.
        """
        with self._wake:
            self._due.append(then)
            if self._thread is None:
                self._thread = threading.Thread(target=self._trim_when_due, name="workzone-trim", daemon=True)
                self._thread.start()
            else:
                self._wake.notify()

    def _trim_when_due(self) -> None:
        while True:
            with self._wake:
                if not self._wake.wait_for(lambda: bool(self._due), timeout=_TRIMMER_IDLE_S):
                    self._thread = None  # idle: the next trim starts another
                    return
                after, self._due = self._due, []
            release_free_memory()  # one trim serves every request that came while it waited
            for then in after:
                if then is not None:
                    then()


class MemoryCeiling:
    """The process's resident memory against a ceiling, with a trim mark below it.

    At or above the trim mark, freed memory is given back to the system (``malloc_trim``, at most once
    per ``trimmer.every_s``, four times as often past the ceiling, in a thread: a trim of a fragmented
    heap takes milliseconds that requests should not wait); at or above the ceiling,
    :meth:`passed` says so (the server's admission refuses new work). The resident size is read at
    most once per ``every_s`` (a read is a system call; admission asks for every request).

    Args:
        limit_bytes: the ceiling; None until :meth:`settle` sets it, 0 for none.
        headroom_bytes: how far below the ceiling the trim mark is.
        every_s: how long a reading is reused.
        trimmer: rate-limits the trims.
    """

    def __init__(self, limit_bytes: int | None, headroom_bytes: int = 0, every_s: float = 0.05,
                 trimmer: Trimmer | None = None) -> None:
        self.limit_bytes = limit_bytes
        self.headroom_bytes = headroom_bytes
        self.every_s = every_s
        self.trimmer = trimmer or Trimmer(every_s=1.0)
        self.trims = 0
        self._at = -1.0
        self._rss: int | None = None
        self._trimming = False

    @property
    def trim_bytes(self) -> int:
        """The trim mark (0: none)."""
        return max(0, self.limit_bytes - self.headroom_bytes) if self.limit_bytes else 0

    def resident(self) -> int | None:
        """The resident size, at most ``every_s`` old (None where it cannot be read)."""
        now = time.monotonic()
        if now - self._at >= self.every_s:
            self._rss, self._at = resident_bytes(), now
        return self._rss

    def settle(self, headroom_bytes: int) -> int | None:
        """Set an unset ceiling to the resident size now plus ``headroom_bytes`` (called once the
        pipeline is loaded and warm: what it holds at rest plus what its work may add). Returns the ceiling."""
        if self.limit_bytes is None:
            rss = resident_bytes()
            if rss is not None:
                self.limit_bytes = rss + headroom_bytes
        return self.limit_bytes

    def tidy(self) -> int | None:
        """Start a trim when the resident size is at or above the trim mark (and none ran within
        ``trimmer.every_s``). Returns the resident size."""
        rss = self.resident()
        mark = self.trim_bytes
        if not mark or rss is None or rss < mark or self._trimming:
            return rss
        # Past the ceiling the heap grows by hundreds of MB a second under load: trim more often.
        past = rss >= (self.limit_bytes or 0)
        if not self.trimmer.claim(self.trimmer.every_s / 4 if past else None):
            return rss
        self.trims += 1
        self._trimming = True
        self.trimmer.trim_in_thread(then=self._trimmed)  # a trim of a fragmented heap takes milliseconds
        return rss

    def _trimmed(self) -> None:
        self._at = -1.0  # read afresh: the trim may have given back much
        self._trimming = False

    def passed(self) -> int | None:
        """The resident size when it is at or above the ceiling, else None (a trim is started first
        when the trim mark is passed)."""
        if not self.limit_bytes:
            return None
        rss = self.tidy()
        return rss if rss is not None and rss >= self.limit_bytes else None


def freeze_loaded_objects() -> int:
    """Collect once, then move every object alive now (modules, models, the app) to the collector's
    permanent generation, which it never scans again.

    A full collection walks every tracked object: with the pipeline loaded, a server's full
    collections took 29-162 ms each under load (2 cores), all of it on the event loop, where every
    request waits for it. After the freeze they walk only what was allocated since.

    Returns:
        The number of objects frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
