"""What the command modules share: consoles, a progress bar, and running a pipeline over a manifest."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from workzone.errors import WorkzoneError

__all__ = ["make_console", "make_progress", "load_rows", "run_rows"]


def make_console(stderr: bool = False, piped_width: int = 140) -> Console:
    """A console for the CLI's output (stdout) or its progress and messages (``stderr``)."""
    # Piped output (CI logs, files) gets a wide fixed width so report tables are not truncated.
    # Messages off a terminal are never hard-wrapped (soft_wrap), so a log line holds a whole sentence.
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty()
    return Console(stderr=stderr, highlight=False, width=piped_width if piped else None, soft_wrap=piped)


def make_progress(console: Console) -> Progress:
    """A progress bar on ``console``, off when neither it nor stderr is a terminal."""
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
                    disable=not console.is_terminal and not sys.stderr.isatty())


def load_rows(manifest: Path, split: Optional[str], console: Console) -> list:
    """The manifest's rows of ``split`` (default: dev when the manifest has a split column; ``all``: every row)."""
    from workzone.io.sources import read_manifest

    rows = read_manifest(manifest)
    if split is None and any(r.split == "dev" for r in rows):
        split = "dev"
        console.print("[dim]manifest has a split column: evaluating split 'dev' (use --split all for every row)[/dim]")
    if split and split != "all":
        rows = [r for r in rows if r.split in split.split(",")]
    if not rows:
        raise WorkzoneError(f"no rows of split {split!r} in {manifest}")
    return rows


def run_rows(manifest: Path, pipeline: str, split: Optional[str], batch_size: int, *, run_all: bool, what: str,
             device: str = "cpu"):
    """Load the pipeline and run it over the manifest's rows with a progress bar: (rows, result, config)."""
    from workzone.api import load_pipeline
    from workzone.evaluation.runner import run_manifest

    console = make_console(stderr=True)
    rows = load_rows(manifest, split, console)
    with load_pipeline(pipeline, device=device) as pipe, make_progress(console) as bar:
        task = bar.add_task(what, total=len(rows))
        result = run_manifest(pipe, rows, batch_size=batch_size, run_all=run_all, progress=lambda k: bar.advance(task, k))
    return rows, result, pipe.config
