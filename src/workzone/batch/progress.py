"""Progress of a batch job: a rich bar with rate and ETA on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["JobProgress"]


class JobProgress:
    """Reports files done (of the total), rows written, errors and rate.

    Args:
        total_items: input files in the job.
        stream: where to report (stderr by default).
        interval_s: seconds between plain lines when ``stream`` is not a terminal.
    """

    def __init__(self, total_items: int, *, stream: TextIO | None = None, interval_s: float = 10.0) -> None:
        self.total = total_items
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.items = self.rows = self.errors = 0
        self._t0 = self._last = time.monotonic()
        self._bar = None
        self._task = None
        self._shown: tuple[int, int, int] | None = None

    def __enter__(self) -> "JobProgress":
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("files"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rows]} rows, {task.fields[errors]} errors, {task.fields[rate]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task("batch", total=self.total, rows=0, errors=0, rate="-")
        return self

    def update(self, *, items: int = 0, rows: int = 0, errors: int = 0) -> None:
        """Add ``items`` files finished, ``rows`` rows written, ``errors`` of them error rows."""
        self.items += items
        self.rows += rows
        self.errors += errors
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(self._task, advance=items, rows=self.rows, errors=self.errors, rate=f"{self.rate:.1f} rows/s")
        elif now - self._last >= self.interval_s:
            self._last = now
            self._line()

    @property
    def rate(self) -> float:
        return self.rows / max(time.monotonic() - self._t0, 1e-9)

    def _line(self) -> None:
        self._shown = (self.items, self.rows, self.errors)
        eta = ""
        if self.items and self.total > self.items:
            left = (time.monotonic() - self._t0) / self.items * (self.total - self.items)
            eta = f", eta {left:.0f} s"
        print(f"batch: {self.items}/{self.total} files, {self.rows} rows ({self.errors} errors), "
              f"{self.rate:.1f} rows/s{eta}", file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._shown != (self.items, self.rows, self.errors):  # the last line said it already
            self._line()
