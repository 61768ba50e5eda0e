"""A batch job end to end: expand inputs, open the store, run an engine, write results and segments."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from workzone.batch.inputs import Identity, expand_inputs
from workzone.batch.local import run_local
from workzone.batch.store import ResultStore
from workzone.errors import ConfigError

__all__ = ["BatchOptions", "BatchSummary", "run_batch_job"]


@dataclass(frozen=True)
class BatchOptions:
    """How a batch job runs (the ``workzone batch`` flags).

    Attributes:
        engine: ``local`` (this process: decode threads + batched cascade) or ``ray``.
        batch_size: images per cascade run.
        decode_workers: decode threads (local engine).
        fps: video sampling rate, frames per second (None: every frame).
        glob: keep only files of folders matching this pattern.
        identity: ``stat`` or ``content`` (see :func:`~workzone.batch.inputs.expand_inputs`).
        restart: discard rows of earlier runs into the same output.
        retry_errors: redo inputs whose earlier row is an error.
        chunk_rows: rows per committed chunk.
        segments: where to write video segments (default ``<out>.segments.json`` when videos are in the job).
        thumbnails: folder for one PNG strip of evidence frames per segment (None: none).
        ray_address: an existing Ray cluster (``auto``, ``ray://host:10001``); None starts a local one.
        ray_workers: cascade actors in the Ray pool (None: as many as Ray's CPUs hold beside decoding).
        ray_cpus: CPUs of a local Ray instance (None: all).
        ray_gpus: GPUs each cascade actor asks Ray for (0: none).
        device: compute device of the stages (``cpu``, ``cuda``, ``cuda:1``).
        progress_interval_s: seconds between plain progress lines off a terminal.
    """

    engine: Literal["local", "ray"] = "local"
    batch_size: int = 16
    decode_workers: int = 2
    fps: float | None = 2.0
    glob: str | None = None
    identity: Identity = "stat"
    restart: bool = False
    retry_errors: bool = False
    chunk_rows: int = 256
    segments: Path | None = None
    thumbnails: Path | None = None
    ray_address: str | None = None
    ray_workers: int | None = None
    ray_cpus: int | None = None
    ray_gpus: float = 0.0
    device: str = "cpu"
    progress_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.decode_workers < 1 or self.chunk_rows < 1 or (self.ray_workers or 1) < 1:
            raise ConfigError("batch: batch_size, decode_workers, chunk_rows and ray_workers must be at least 1")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"batch: fps must be positive, got {self.fps}")


@dataclass
class BatchSummary:
    """What a run did: counts, rate, errors, where the results are."""

    inputs: int
    rows: int
    new_rows: int
    errors: int
    elapsed_s: float
    outputs: list[Path]
    videos: int = 0
    segments: int = 0
    segments_file: Path | None = None
    thumbnails: list[Path] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.new_rows / max(self.elapsed_s, 1e-9)


def _job_identity(config: Any, options: BatchOptions) -> dict[str, Any]:
    return {"pipeline": config.name, "pipeline_sha1": hashlib.sha1(config.model_dump_json().encode()).hexdigest(),
            "fps": options.fps, "identity": options.identity}


def run_batch_job(inputs: Sequence[str | Path], outputs: Sequence[Path], *, pipeline: str | Path = "default",
                  options: BatchOptions = BatchOptions(), progress_stream: Any = None) -> BatchSummary:
    """Run (or resume) a batch job and write its results files.

    Args:
        inputs: folders, globs, manifests, file lists, images, videos.
        outputs: ``.parquet`` and/or ``.jsonl`` results files.
        pipeline: built-in pipeline name or YAML path.
        options: engine and job settings.
        progress_stream: where progress goes (default stderr).

    Raises:
        ConfigError: bad options, or the output holds rows of a different job.
        MissingExtraError: Parquet, video or Ray support, or a stage's extra, is not installed.
        ModelFileError: a stage's model file is missing.
    """
    from workzone.batch.progress import JobProgress
    from workzone.checking import require_runnable
    from workzone.config.loader import load_pipeline_config

    t0 = time.perf_counter()
    config, where = load_pipeline_config(pipeline)
    # What `workzone check` would report stops the job before it reads an input (or starts Ray).
    require_runnable(config, where.parent, what="workzone batch", reference=str(pipeline))
    items = expand_inputs(inputs, glob_pattern=options.glob, identity=options.identity)
    if not items:
        raise ConfigError("batch: the inputs name no image or video file")
    store = ResultStore([Path(o) for o in outputs], _job_identity(config, options), chunk_rows=options.chunk_rows,
                        retry_errors=options.retry_errors)
    store.open(restart=options.restart)
    before = set(store.done)
    with JobProgress(len(items), stream=progress_stream, interval_s=options.progress_interval_s) as progress:
        if options.engine == "ray":
            from workzone.batch.ray_engine import run_ray

            run_ray(pipeline, items, store, options=options, progress=progress)
        else:
            from workzone.api import load_pipeline

            with load_pipeline(pipeline, device=options.device) as pipe:
                run_local(pipe, items, store, batch_size=options.batch_size, decode_workers=options.decode_workers,
                          fps=options.fps, progress=progress)
    rows = store.finalize({it.file_id for it in items})
    summary = BatchSummary(inputs=len(items), rows=len(rows), new_rows=sum(1 for r in rows if r["key"] not in before),
                           errors=sum(1 for r in rows if r["error"]), elapsed_s=time.perf_counter() - t0,
                           outputs=list(store.outputs))
    if any(it.kind == "video" for it in items):
        _write_video_reports(rows, config, options, summary)
    return summary


def _write_video_reports(rows: list[dict[str, Any]], config: Any, options: BatchOptions, summary: BatchSummary) -> None:
    from workzone.video.segments_report import pipeline_prior, video_segments, write_segments, write_thumbnail_strip

    videos = video_segments(rows, prior=pipeline_prior(config.tuning))
    target = options.segments or summary.outputs[0].with_suffix(".segments.json")
    if options.thumbnails is not None:
        for v in videos:
            for k, seg in enumerate(v["segments"]):
                out = options.thumbnails / f"{Path(v['path']).stem}.segment{k:03d}.png"
                seg["thumbnail_strip"] = str(write_thumbnail_strip(v["path"], list(seg["evidence_frames"]), out))
                summary.thumbnails.append(out)
    write_segments(videos, target)
    summary.videos = len(videos)
    summary.segments = sum(len(v["segments"]) for v in videos)
    summary.segments_file = target

