"""Durable, exactly-once storage of a batch job's rows, and the final results files.

Rows are appended to ``<out>.parts/`` in *chunks*: each chunk is written to a temporary file,
flushed to disk and renamed into place, so a chunk is either wholly there or not at all; a kill at
any moment loses at most the rows not yet in a chunk, and those are redone. On a rerun the keys of
every committed chunk are "done" and skipped. Ray runs write Parquet files into the same folder;
a Parquet file cut short by a kill has no footer, cannot be read, and is discarded (its rows are
redone). The results files (``.parquet``, ``.jsonl``) are rebuilt from the chunks at the end of
every run: one row per key (the newest wins), sorted by path and frame.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from workzone.batch.rows import COLUMNS, arrow_schema
from workzone.errors import ConfigError, DataError
from workzone.io.atomic import PARTIAL_SUFFIX, atomic_path

__all__ = ["ResultStore", "write_atomic", "read_results"]

_OUTPUT_SUFFIXES = (".parquet", ".jsonl", ".json")


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


class ResultStore:
    """The rows of one job (one output path), committed in atomic chunks.

    Args:
        outputs: results files to write at the end (``.parquet`` and/or ``.jsonl``); the first
            names the parts folder ``<first>.parts``.
        job: what identifies the job (pipeline, sampling rate, ...); a rerun with a different job
            into the same parts folder is refused.
        chunk_rows: rows per chunk at most.
        chunk_seconds: commit a non-empty chunk at least this often.
        retry_errors: treat committed error rows as not done, so a rerun tries those inputs again.
    """

    def __init__(self, outputs: list[Path], job: dict[str, Any], *, chunk_rows: int = 256,
                 chunk_seconds: float = 10.0, retry_errors: bool = False) -> None:
        if not outputs:
            raise ConfigError("batch: give at least one --out file (.parquet or .jsonl)")
        for out in outputs:
            if out.suffix.lower() not in _OUTPUT_SUFFIXES:
                raise ConfigError(f"--out {out}: expected a .parquet or .jsonl file, got suffix {out.suffix!r}")
        self.outputs = [Path(o) for o in outputs]
        self.parts = self.outputs[0].with_name(self.outputs[0].name + ".parts")
        self.job = job
        self.chunk_rows = chunk_rows
        self.chunk_seconds = chunk_seconds
        self.retry_errors = retry_errors
        self.done: set[str] = set()
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._seq = 0

    def open(self, *, restart: bool = False) -> None:
        """Create or reopen the parts folder and load the done keys."""
        if restart and self.parts.exists():
            shutil.rmtree(self.parts)
        self.parts.mkdir(parents=True, exist_ok=True)
        job_file = self.parts / "job.json"
        if job_file.exists():
            previous = json.loads(job_file.read_text(encoding="utf-8"))
            if previous != self.job:
                diff = sorted(k for k in set(previous) | set(self.job) if previous.get(k) != self.job.get(k))
                raise ConfigError(f"{self.parts} holds rows of another job (differs in: {', '.join(diff)}); "
                                  "rerun with the same settings, choose another --out, or pass --restart")
        else:
            write_atomic(job_file, lambda p: p.write_text(json.dumps(self.job, sort_keys=True), encoding="utf-8"))
        for tmp in self.parts.glob(f".*{PARTIAL_SUFFIX}"):  # a chunk being written when the last run was killed
            tmp.unlink(missing_ok=True)
        seqs = [int(p.stem.split("-")[1]) for p in self.parts.glob("chunk-*.jsonl")]
        self._seq = max(seqs, default=0)
        self.done = {r["key"] for r in self.iter_rows() if not (self.retry_errors and r.get("error"))}

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Queue rows; commit a chunk when enough rows or time have gathered."""
        for row in rows:
            self._pending.append(row)
            self.done.add(row["key"])
        if len(self._pending) >= self.chunk_rows or time.monotonic() - self._last_flush >= self.chunk_seconds:
            self.flush()

    def flush(self) -> None:
        """Commit the queued rows as one chunk (no-op when none are queued)."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        self._seq += 1
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self._pending)
        write_atomic(self.parts / f"chunk-{self._seq:08d}.jsonl", lambda p: p.write_text(text, encoding="utf-8"))
        self._pending = []

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every committed row: chunks in commit order, then readable Parquet parts of Ray runs."""
        for chunk in sorted(self.parts.glob("chunk-*.jsonl")):
            with chunk.open(encoding="utf-8") as fh:
                for line in fh:
                    yield json.loads(line)
        ray_files = sorted(self.parts.glob("ray-*/*.parquet"))
        if ray_files:
            from workzone._optional import require

            pq = require("pyarrow.parquet", "batch", "reading Ray parts")
            for f in ray_files:
                try:
                    table = pq.read_table(f)
                except Exception:  # noqa: BLE001 - a file cut short by a kill has no footer: redo its rows
                    f.unlink(missing_ok=True)
                    continue
                yield from ({c: r.get(c) for c in COLUMNS} for r in table.to_pylist())

    def finalize(self, file_ids: set[str] | None = None) -> list[dict[str, Any]]:
        """Write the results files from every committed row and return those rows.

        Args:
            file_ids: keep only rows of these input identities (the current job's inputs), so a
                file changed or removed since an earlier run leaves no stale row behind.
        """
        self.flush()
        by_key: dict[str, dict[str, Any]] = {}
        for row in self.iter_rows():
            if file_ids is None or row["key"].rsplit(":", 1)[0] in file_ids:
                by_key[row["key"]] = row
        rows = sorted(by_key.values(), key=lambda r: (r["path"], -1 if r["frame_index"] is None else r["frame_index"]))
        for out in self.outputs:
            _write_results(out, rows)
        return rows


def _write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    if out.suffix.lower() == ".parquet":
        from workzone._optional import require

        pa = require("pyarrow", "batch", "Parquet output")
        pq = require("pyarrow.parquet", "batch", "Parquet output")
        table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=arrow_schema())
        write_atomic(out, lambda p: pq.write_table(table, p))
    else:
        text = "".join(json.dumps({c: r.get(c) for c in COLUMNS}) + "\n" for r in rows)
        write_atomic(out, lambda p: p.write_text(text, encoding="utf-8"))


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a results file written by ``workzone batch`` (``.parquet`` or ``.jsonl``) into rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"results file {path} does not exist")
    if path.suffix.lower() == ".parquet":
        from workzone._optional import require

        return require("pyarrow.parquet", "batch", "reading Parquet").read_table(path).to_pylist()
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
