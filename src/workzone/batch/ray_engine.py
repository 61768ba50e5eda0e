"""The Ray engine: the same job as a Ray Data pipeline (extra ``ray``).

read (the job's work items) -> decode (tasks; a video streams its sampled frames in batches) ->
``map_batches`` over a fixed pool of cascade actors (each loads the pipeline once) -> write
Parquet into the job's parts folder. The driver never sees pixels, only the work items.

Exactly-once: keys already committed (by either engine) are filtered out before decoding, and a
Parquet part is either complete (it has a footer) or discarded on the next run (see
:mod:`workzone.batch.store`). On an existing cluster (``--ray-address``) every node needs the
same workzone install as the driver.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from workzone.batch.inputs import WorkItem, row_key
from workzone.batch.store import ResultStore

__all__ = ["run_ray"]

# Decode tasks take a fraction of a CPU so that, on a small machine, they still run beside a pool
# of cascade actors that hold one CPU each. Ray Data holds the actors' CPUs for the whole job, so a
# pool that leaves less than _DECODE_CPUS free starves decoding and the job waits forever: the pool
# is sized (or refused) from these numbers before Ray starts anything.
_DECODE_CPUS = 0.5
_ACTOR_CPUS = 1.0


def size_actor_pool(cpus: float, requested: int | None, *, gpus: float = 0.0, gpus_per_actor: float = 0.0) -> int:
    """How many cascade actors Ray can schedule beside the decode tasks.

    Args:
        cpus: CPUs of the Ray instance or cluster.
        requested: ``--ray-workers`` (None: as many as fit).
        gpus: GPUs of the instance or cluster.
        gpus_per_actor: ``--ray-gpus``.

    Raises:
        ConfigError: not even one actor fits, or ``requested`` actors do not; the message gives the
            numbers and the flag that fixes it.

    Examples:
        >>> size_actor_pool(2, None), size_actor_pool(4, None), size_actor_pool(4, 2)
        (1, 3, 2)
    """
    from workzone.errors import ConfigError

    fit = int((cpus - _DECODE_CPUS) // _ACTOR_CPUS)
    what = f"{fit} cascade actor(s) at {_ACTOR_CPUS:g} CPU each beside decoding at {_DECODE_CPUS:g} CPU"
    if gpus_per_actor > 0:
        by_gpu = int(gpus // gpus_per_actor + 1e-9)
        if by_gpu < fit:
            fit = by_gpu
            what = f"{fit} cascade actor(s) at --ray-gpus {gpus_per_actor:g} on {gpus:g} GPU(s)"
    if fit < 1:
        raise ConfigError(f"--engine ray: Ray has {cpus:g} CPU(s) and {gpus:g} GPU(s), which cannot hold one cascade "
                          f"actor ({_ACTOR_CPUS:g} CPU{f', {gpus_per_actor:g} GPU' if gpus_per_actor else ''}) beside "
                          f"decoding ({_DECODE_CPUS:g} CPU); give Ray more (--ray-cpus, or a larger --ray-address "
                          "cluster) or use --engine local")
    if requested is None:
        return fit
    if requested > fit:
        has = f"{cpus:g} CPU(s)" + (f" and {gpus:g} GPU(s)" if gpus_per_actor else "")
        raise ConfigError(f"--ray-workers {requested}: Ray has {has}, which hold {what}; {requested} actors would "
                          f"wait forever for resources. Use --ray-workers {fit} (or leave it out: the pool is sized from the CPUs), or give Ray more "
                          "CPUs (--ray-cpus, --ray-address)")
    return requested


def run_ray(pipeline: str | Path, items: list[WorkItem], store: ResultStore, *, options: Any,
            progress: Any = None) -> None:
    """Run ``items`` through a Ray Data pipeline of cascade actors; rows land in ``store.parts``."""
    from workzone._optional import require

    ray = require("ray", "ray", "--engine ray")
    require("pyarrow", "ray", "--engine ray")
    pipeline_ref = str(Path(pipeline).resolve()) if Path(str(pipeline)).suffix in (".yaml", ".yml") else str(pipeline)
    todo = [{"item_index": i, "path": str(it.path), "kind": it.kind, "file_id": it.file_id,
             "done_frames": _done_frames(it, store.done)}
            for i, it in enumerate(items) if it.kind == "video" or row_key(it.file_id, None) not in store.done]
    if not todo:
        return
    local = options.ray_address is None and not ray.is_initialized()
    if local:  # refuse what cannot be scheduled before starting Ray
        size_actor_pool(options.ray_cpus or os.cpu_count() or 1, options.ray_workers)
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if options.ray_address is None:
            kwargs["num_cpus"] = options.ray_cpus or os.cpu_count()
        ray.init(address=options.ray_address, **kwargs)
        started = True
    try:
        res = ray.cluster_resources()
        workers = size_actor_pool(float(res.get("CPU", 0.0)), options.ray_workers, gpus=float(res.get("GPU", 0.0)),
                                  gpus_per_actor=options.ray_gpus)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = bool(progress is not None and progress.stream.isatty())
        ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 16 * workers))
        ds = ds.map_batches(_decode_batches, batch_size=1, num_cpus=_DECODE_CPUS,
                            fn_kwargs={"fps": options.fps, "batch_size": options.batch_size})
        ds = ds.map_batches(_CascadeActor,
                            fn_constructor_kwargs={"pipeline": pipeline_ref, "device": options.device},
                            batch_size=options.batch_size, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=_ACTOR_CPUS,
                            num_gpus=options.ray_gpus)
        run_dir = store.parts / f"ray-{uuid.uuid4().hex[:12]}"
        ds.write_parquet(str(run_dir))
    finally:
        if started:
            ray.shutdown()
    if progress is not None:
        rows, errors = _count_rows(run_dir)
        progress.update(items=len(items), rows=rows, errors=errors)


def _count_rows(run_dir: Path) -> tuple[int, int]:
    """Rows and error rows the Ray sink wrote (the progress line reports them, as the local engine's does)."""
    import pyarrow.parquet as pq

    rows = errors = 0
    for f in sorted(run_dir.glob("*.parquet")):
        col = pq.read_table(f, columns=["error"]).column("error")
        rows += len(col)
        errors += len(col) - col.null_count
    return rows, errors


def _done_frames(item: WorkItem, done: set[str]) -> list[str]:
    prefix = f"{item.file_id}:"
    return [k for k in done if k.startswith(prefix)] if item.kind == "video" else []


def _decode_batches(batch: dict[str, np.ndarray], *, fps: float | None, batch_size: int) -> Iterator[dict[str, list]]:
    """Decode one work item into batches of rows: pixels as raw RGB bytes plus their shape."""
    from workzone.batch.decode import iter_units
    from workzone.batch.inputs import WorkItem

    for k in range(len(batch["path"])):
        item = WorkItem(Path(str(batch["path"][k])), str(batch["kind"][k]), str(batch["file_id"][k]))  # type: ignore[arg-type]
        done = set(batch["done_frames"][k])
        out: dict[str, list] = _empty()
        for u in iter_units(int(batch["item_index"][k]), item, fps=fps, done=done):
            px = u.image.pixels if u.image is not None else np.zeros((0, 0, 3), np.uint8)
            for col, v in (("key", u.key), ("path", u.path), ("frame_index", u.frame_index),
                           ("timestamp_s", u.timestamp_s), ("error", u.error), ("pixels", px.tobytes()),
                           ("height", px.shape[0]), ("width", px.shape[1])):
                out[col].append(v)
            if len(out["key"]) >= batch_size:
                yield out
                out = _empty()
        if out["key"]:
            yield out


def _empty() -> dict[str, list]:
    return {c: [] for c in ("key", "path", "frame_index", "timestamp_s", "error", "pixels", "height", "width")}


class _CascadeActor:
    """One loaded pipeline per actor; turns batches of decoded frames into result rows."""

    def __init__(self, pipeline: str, device: str = "cpu") -> None:
        from workzone.api import load_pipeline

        self.pipe = load_pipeline(pipeline, device=device)

    def __call__(self, batch):
        import pyarrow as pa

        from workzone.batch.decode import Unit
        from workzone.batch.local import rows_for_units
        from workzone.batch.rows import COLUMNS, arrow_schema
        from workzone.types import FrameRef, Image

        units = []
        for rec in batch.to_pylist():  # pyarrow batches keep nulls as None (numpy would make them NaN)
            frame, path, image = rec["frame_index"], rec["path"], None
            if rec["height"] and rec["width"]:
                px = np.frombuffer(rec["pixels"], dtype=np.uint8).reshape(rec["height"], rec["width"], 3).copy()
                image = Image(px, source=path if frame is None else f"{path}#frame={frame}",
                              frame=None if frame is None else FrameRef(path, frame))
            units.append(Unit(0, rec["key"], path, frame, rec["timestamp_s"], image=image, error=rec["error"]))
        rows = rows_for_units(self.pipe.run_decoded, units)
        return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=arrow_schema())
