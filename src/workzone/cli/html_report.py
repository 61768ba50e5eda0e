"""``workzone report``: an HTML report from a labelled manifest (evaluated here) or from prediction records.

``workzone eval --html FILE --predictions FILE.jsonl`` writes the same report and the records it was
built from; ``write_eval_outputs`` is shared by both commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from workzone.config.schema import PipelineConfig
    from workzone.evaluation.runner import EvalResult

__all__ = ["register", "write_eval_outputs"]


def register(app: typer.Typer) -> None:
    """Add ``report`` to ``app``."""
    app.command("report")(report)


def write_eval_outputs(result: "EvalResult", manifest: Path, config: "PipelineConfig", *,
                       predictions: Optional[Path], html: Optional[Path], gallery: int = 8) -> list[str]:
    """Write the prediction records and/or the HTML report of an evaluation run; returns what was written."""
    from workzone.evaluation.records import records_from_eval, write_records

    base = manifest.resolve().parent
    records = records_from_eval(result, base)
    done = []
    if predictions:
        n = write_records(records, predictions)
        done.append(f"{n} prediction records written to {predictions}")
    if html:
        from workzone.evaluation.html_report import write_report

        write_report(html, records, base=base, title=f"workzone evaluation: pipeline {config.name}",
                     tuning=config.tuning or None, tier_names=[t.name for t in config.tiers], gallery_size=gallery,
                     source_note=f"Manifest {manifest.name}.")
        done.append(f"HTML report written to {html} ({html.stat().st_size / 1e6:.2f} MB)")
    return done


def report(
    manifest_or_records: Path = typer.Argument(..., help="a labelled manifest (.csv; evaluated now) or prediction records (.jsonl "
                                 "from `workzone eval --predictions` or `workzone batch`)"),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="the HTML file to write"),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", "-p", help="pipeline (name or YAML): the one to "
                                           "evaluate a manifest with (default: default), or, for records, where "
                                           "the tier names and the tuning block come from"),
    split: Optional[str] = typer.Option(None, help="manifest rows of this split (comma list, or 'all'); default: dev "
                                        "when present"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="for records: join true labels, sources and "
                                            "conditions from this manifest by path"),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="for a manifest: also write the records "
                                               "(JSON Lines)"),
    gallery: int = typer.Option(8, min=0, help="misses and false alarms shown in the gallery (each)"),
    batch_size: int = typer.Option(8, min=1),
) -> None:
    """Write a self-contained HTML report: metrics with intervals, curves, calibration, per source and
    condition, exit funnel, cost/MCC trade-off, latency, and the worst errors with their evidence."""
    from workzone.cli._common import make_console
    from workzone.config.loader import load_pipeline_config
    from workzone._optional import require_installed
    from workzone.errors import DataError

    require_installed(["matplotlib"], "report", "workzone report")  # before evaluating a manifest, not after
    console = make_console(stderr=True)
    if manifest_or_records.suffix.lower() == ".csv":
        for line in _evaluate(manifest_or_records, pipeline or "default", split, batch_size, predictions, out, gallery):
            console.print(line)
        return
    from workzone.evaluation.records import join_truth, read_records
    from workzone.evaluation.html_report import write_report

    records = read_records(manifest_or_records)
    note = f"Records {manifest_or_records.name}."
    if manifest is not None:
        from workzone.cli._common import load_rows

        rows = load_rows(manifest, split or "all", console)
        matched = join_truth(records, rows, manifest.resolve().parent)
        if not matched:
            raise DataError(f"no record path matches a row of {manifest}: record paths must be absolute or "
                            f"relative to {manifest.resolve().parent}")
        note += f" Labels from {manifest.name} ({matched} of {len(records)} records matched)."
        base = manifest.resolve().parent
    else:
        base = manifest_or_records.resolve().parent
    config = load_pipeline_config(pipeline)[0] if pipeline else None
    write_report(out, records, base=base, title=f"workzone report: {config.name if config else manifest_or_records.name}",
                 tuning=(config.tuning or None) if config else None,
                 tier_names=[t.name for t in config.tiers] if config else None, gallery_size=gallery,
                 source_note=note)
    console.print(f"HTML report written to {out} ({out.stat().st_size / 1e6:.2f} MB)")


def _evaluate(manifest: Path, pipeline: str, split: Optional[str], batch_size: int, predictions: Optional[Path],
              html: Path, gallery: int) -> list[str]:
    from workzone.api import load_pipeline
    from workzone.cli._common import load_rows, make_console, make_progress
    from workzone.evaluation.runner import run_manifest

    console = make_console(stderr=True)
    rows = load_rows(manifest, split, console)
    with load_pipeline(pipeline) as pipe, make_progress(console) as bar:
        task = bar.add_task("evaluating", total=len(rows))
        result = run_manifest(pipe, rows, batch_size=batch_size, progress=lambda k: bar.advance(task, k))
        config = pipe.config
    return write_eval_outputs(result, manifest, config, predictions=predictions, html=html, gallery=gallery)

