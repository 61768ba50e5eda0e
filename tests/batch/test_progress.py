"""JobProgress off a terminal: plain periodic lines with counts and rate."""

from __future__ import annotations

import io

from workzone.batch.progress import JobProgress


def test_plain_lines_off_a_terminal() -> None:
    stream = io.StringIO()
    with JobProgress(4, stream=stream, interval_s=0.0) as p:
        p.update(items=1, rows=3, errors=1)
        p.update(items=3, rows=5)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("batch: 1/4 files, 3 rows (1 errors)") and "eta" in lines[0]
    assert lines[-1].startswith("batch: 4/4 files, 8 rows (1 errors)") and "rows/s" in lines[-1]


def test_lines_are_spaced_by_the_interval() -> None:
    stream = io.StringIO()
    with JobProgress(100, stream=stream, interval_s=3600) as p:
        for _ in range(50):
            p.update(items=1, rows=1)
    assert len(stream.getvalue().splitlines()) == 1  # only the closing line
