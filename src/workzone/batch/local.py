"""The single-process engine: decode threads feed batched cascade runs.

Decoding (Pillow, FFmpeg) and inference (onnxruntime on the pipeline's own event-loop thread)
both release the GIL, so a few decode threads keep the cascade's batches full while it runs.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from typing import Any, Callable

from workzone.batch.decode import Unit, iter_units
from workzone.batch.inputs import WorkItem
from workzone.batch.rows import decision_row, error_row
from workzone.batch.store import ResultStore

__all__ = ["run_local", "rows_for_units"]

_WORKER_DONE = object()


def rows_for_units(run: Callable[[list[Any]], list[Any]], units: list[Unit]) -> list[dict[str, Any]]:
    """Decide the decoded units with ``run`` (a list of images -> decisions) and build their rows.

    A failure of the whole cascade call becomes an error row for each unit of the batch.
    """
    ok = [u for u in units if u.image is not None]
    rows: dict[str, dict[str, Any]] = {}
    if ok:
        try:
            decisions = run([u.image for u in ok])
            for u, d in zip(ok, decisions):
                rows[u.key] = decision_row(u.key, u.path, u.frame_index, u.timestamp_s, d)
        except Exception as exc:  # noqa: BLE001 - one failed batch is rows with errors, not the end of the job
            for u in ok:
                rows[u.key] = error_row(u.key, u.path, u.frame_index, u.timestamp_s, f"{type(exc).__name__}: {exc}")
    for u in units:
        if u.image is None:
            rows[u.key] = error_row(u.key, u.path, u.frame_index, u.timestamp_s, u.error or "not decoded")
    return [rows[u.key] for u in units]


def run_local(pipe: Any, items: list[WorkItem], store: ResultStore, *, batch_size: int = 16,
              decode_workers: int = 2, fps: float | None = 2.0, progress: Any = None) -> None:
    """Run every item through ``pipe`` (a :class:`workzone.Pipeline`), committing rows to ``store``.

    Args:
        pipe: a loaded pipeline (``workzone.load_pipeline``).
        items: the job's inputs.
        store: an opened result store; keys in ``store.done`` are skipped.
        batch_size: images per cascade run.
        decode_workers: decode threads.
        fps: video sampling rate.
        progress: a :class:`~workzone.batch.progress.JobProgress` (or None).
    """
    work: queue.Queue = queue.Queue()
    for i, item in enumerate(items):
        work.put((i, item))
    units: queue.Queue = queue.Queue(maxsize=batch_size * 4)
    stop = threading.Event()

    def put(obj: Any) -> None:
        while not stop.is_set():
            try:
                units.put(obj, timeout=0.2)
                return
            except queue.Full:
                continue

    def worker() -> None:
        try:
            while not stop.is_set():
                try:
                    i, item = work.get_nowait()
                except queue.Empty:
                    break
                n = 0
                for unit in iter_units(i, item, fps=fps, done=store.done, decoder=pipe.service.decoder):
                    put(unit)
                    n += 1
                put(("end", i, n))
        except BaseException as exc:  # noqa: BLE001 - hand it to the main thread, which re-raises
            put(exc)
        finally:
            put(_WORKER_DONE)

    threads = [threading.Thread(target=worker, name=f"workzone-decode-{k}", daemon=True)
               for k in range(max(1, decode_workers))]
    for t in threads:
        t.start()
    expected: dict[int, int] = {}
    seen: Counter[int] = Counter()
    batch: list[Unit] = []

    def finished_items() -> int:
        done = [i for i, n in expected.items() if seen[i] >= n]
        for i in done:
            del expected[i]
        return len(done)

    def run_batch() -> None:
        rows = rows_for_units(pipe.run_decoded, batch)
        store.add(rows)
        for u in batch:
            seen[u.item_index] += 1
        if progress is not None:
            progress.update(items=finished_items(), rows=len(rows), errors=sum(1 for r in rows if r["error"]))
        batch.clear()

    live = len(threads)
    try:
        while live:
            try:
                msg = units.get(timeout=0.05 if batch else None)
            except queue.Empty:  # decoders are behind: run what we have rather than idle
                run_batch()
                continue
            if msg is _WORKER_DONE:
                live -= 1
            elif isinstance(msg, BaseException):
                raise msg
            elif isinstance(msg, tuple):
                expected[msg[1]] = msg[2]
                if progress is not None:
                    progress.update(items=finished_items())
            else:
                batch.append(msg)
                if len(batch) >= batch_size:
                    run_batch()
        if batch:
            run_batch()
        store.flush()
        if progress is not None:
            progress.update(items=finished_items())
    finally:
        stop.set()
