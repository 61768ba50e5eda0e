"""``workzone batch``: run a pipeline over folders, manifests, file lists and videos, resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``batch`` to ``app``."""
    app.command("batch")(batch)


def batch(
    inputs: Annotated[List[str], typer.Argument(help="folders (recursive), globs ('shots/**/*.jpg'), CSV/Parquet "
                                                     "manifests with a path column, .txt file lists, images, videos")],
    out: Annotated[List[Path], typer.Option("--out", "-o", help="results file, .parquet or .jsonl (repeat for both)")],
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="built-in pipeline name or YAML file")] = "default",
    engine: Annotated[str, typer.Option(help="local (this process) or ray")] = "local",
    batch_size: Annotated[int, typer.Option(min=1, help="images per cascade run")] = 16,
    decode_workers: Annotated[int, typer.Option(min=1, help="decode threads (local engine)")] = 2,
    fps: Annotated[float, typer.Option(help="video sampling rate, frames per second (0: every frame)")] = 2.0,
    glob: Annotated[Optional[str], typer.Option("--glob", help="keep files of folders matching this pattern")] = None,
    identity: Annotated[str, typer.Option(help="row identity: stat (path, size, mtime) or content (path + SHA-1)")] = "stat",
    restart: Annotated[bool, typer.Option("--restart", help="discard rows of earlier runs into --out")] = False,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="redo inputs whose earlier row is an error")] = False,
    segments: Annotated[Optional[Path], typer.Option(help="video segments JSON (default <out>.segments.json)")] = None,
    thumbnails: Annotated[Optional[Path], typer.Option(help="folder for a PNG strip of each segment's evidence frames")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="existing Ray cluster (auto, ray://host:10001)")] = None,
    ray_workers: Annotated[Optional[int], typer.Option(min=1, help="cascade actors in the Ray pool (default: as many as "
                                                       "Ray's CPUs hold, one CPU each beside decoding)")] = None,
    ray_cpus: Annotated[Optional[int], typer.Option(min=1, help="CPUs of a local Ray instance (default: all)")] = None,
    ray_gpus: Annotated[float, typer.Option(min=0, help="GPUs per cascade actor on Ray (0: none)")] = 0.0,
    device: Annotated[str, typer.Option(help="compute device of the stages: cpu, cuda, cuda:1 ...")] = "cpu",
    chunk_rows: Annotated[int, typer.Option(min=1, help="rows per committed chunk")] = 256,
    progress_interval: Annotated[float, typer.Option(help="seconds between progress lines when not on a terminal")] = 10.0,
) -> None:
    """Decide every image and sampled video frame; one row each, resumable after a kill (rerun the same command)."""
    from workzone.batch.job import BatchOptions, run_batch_job
    from workzone.cli._common import make_console
    from workzone.errors import ConfigError

    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine: expected local or ray, got {engine!r}")
    if identity not in ("stat", "content"):
        raise ConfigError(f"--identity: expected stat or content, got {identity!r}")
    options = BatchOptions(engine=engine, batch_size=batch_size, decode_workers=decode_workers, fps=fps or None,  # type: ignore[arg-type]
                           glob=glob, identity=identity, restart=restart, retry_errors=retry_errors,  # type: ignore[arg-type]
                           chunk_rows=chunk_rows, segments=segments, thumbnails=thumbnails, ray_address=ray_address,
                           ray_workers=ray_workers, ray_cpus=ray_cpus, ray_gpus=ray_gpus, device=device,
                           progress_interval_s=progress_interval)
    s = run_batch_job(inputs, out, pipeline=pipeline, options=options)
    con = make_console(stderr=True)  # off a terminal the summary stays one line per fact
    con.print(f"batch done: {s.inputs} inputs, {s.rows} rows ({s.new_rows} new this run, {s.errors} errors) "
              f"in {s.elapsed_s:.1f} s, {s.rows_per_s:.1f} new rows/s")
    con.print("results: " + ", ".join(str(o) for o in s.outputs))
    if s.segments_file is not None:
        con.print(f"videos: {s.videos}, work-zone segments: {s.segments} -> {s.segments_file}")
