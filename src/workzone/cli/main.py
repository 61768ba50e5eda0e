"""The ``workzone`` command line: detect, eval, tune (+ train, serve, plan from their own modules)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from workzone.cli._common import make_console, run_rows
from workzone.errors import WorkzoneError

app = typer.Typer(name="workzone", help="Is there road work in this image? A calibrated probability with evidence.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

# Sub-command groups that live in their own modules; each exposes register(app).
_COMMAND_MODULES = ("workzone.cli.train", "workzone.cli.plan", "workzone.cli.serve", "workzone.cli.report",
                    "workzone.cli.anomaly", "workzone.cli.batch", "workzone.cli.bench")

def _print_version(value: bool) -> None:
    if value:
        from workzone import __version__

        print(f"workzone {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """Is there road work in this image? A calibrated probability with evidence."""


PipelineOpt = typer.Option("default", "--pipeline", "-p", help="built-in pipeline name or YAML file")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, or cuda / cuda:N: ONNX stages run through torch on the GPU "
                                                 "([gpu] extra), JPEG bytes are decoded there")




@app.command()
def detect(
    images: List[Path] = typer.Argument(..., help="image files or folders (searched recursively)"),
    pipeline: str = PipelineOpt,
    device: str = DeviceOpt,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object per image (JSON lines)"),
    batch_size: int = typer.Option(8, min=1, help="images decided together"),
    deadline: Optional[float] = typer.Option(None, help="seconds per batch before slow tiers are skipped"),
) -> None:
    """Decide whether each image shows road work, with the evidence behind it."""
    from workzone.api import load_pipeline
    from workzone.errors import InvalidImageError
    from workzone.io.sources import iter_image_paths

    out, err = make_console(), make_console(stderr=True)
    paths = list(iter_image_paths(images))
    if not paths:
        raise WorkzoneError("no images found in the given paths (for videos, use `workzone batch`)")
    from workzone.batch.inputs import VIDEO_SUFFIXES

    video = next((p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES), None)
    if video is not None:
        raise WorkzoneError(f"{video} is a video and detect decides images: run `workzone batch {video} "
                            "--out frames.jsonl` (pip install 'workzone[video]')")
    failed = 0
    with load_pipeline(pipeline, device=device) as pipe:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            decoded, kept = [], []
            for p in chunk:
                try:
                    from workzone.io.images import decode_image
                    decoded.append(decode_image(p, limits=pipe.limits))
                    kept.append(p)
                except InvalidImageError as exc:
                    failed += 1
                    if as_json:
                        print(json.dumps({"source": str(p), "error": str(exc)}))
                    else:
                        from rich.markup import escape

                        err.print(f"[red]skipped[/red] {escape(str(exc))}")
            for p, d in zip(kept, pipe.run_decoded(decoded, deadline_s=deadline)):
                if as_json:
                    print(json.dumps(d.to_dict(), default=str))
                else:
                    _print_decision(out, d)
    if failed:
        raise typer.Exit(code=2)


def _print_decision(console: Console, d) -> None:
    colour = "red" if d.label else "green"
    console.print(f"[bold]{d.source}[/bold]: [{colour}]{'ROAD WORK' if d.label else 'no road work'}[/{colour}] "
                  f"p={d.probability:.3f}  (decided after tier '{d.exit_tier_name}', {d.reason}, {d.latency_ms:.0f} ms)")
    table = Table(show_header=True, header_style="dim", box=None, pad_edge=False)
    for col in ("stage", "tier", "P(road work)", "ms/img", "evidence"):
        table.add_column(col)
    for s in d.stages:
        ev = []
        ev += [f"{b.label} {b.score:.2f} @({b.x1:.0f},{b.y1:.0f},{b.x2:.0f},{b.y2:.0f})" for b in s.evidence.boxes[:4]]
        ev += [f"text '{t.text}'" + (f" ~ {t.matched}" if t.matched else "") for t in s.evidence.texts[:3]]
        ev += list(s.evidence.notes[:2])
        if s.error:
            ev = [f"[red]failed: {s.error}[/red]"]
        prob = "abstained" if s.probability is None else f"{s.probability:.3f}"
        table.add_row(s.stage, str(s.tier), prob, f"{s.latency_ms:.1f}", "; ".join(ev))
    console.print(table)


@app.command("eval")
def eval_(
    manifest: Path = typer.Argument(..., help="CSV with path,label (+ source, split, ...); paths relative to it"),
    pipeline: str = PipelineOpt,
    split: Optional[str] = typer.Option(None, help="rows of this split (comma list, or 'all'); default: dev when present"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the full report as JSON"),
    html: Optional[Path] = typer.Option(None, "--html", help="write the HTML report (plots, evidence gallery)"),
    predictions: Optional[Path] = typer.Option(None, "--predictions",
                                               help="write one record per image with its evidence (JSON Lines)"),
    batch_size: int = typer.Option(8, min=1),
    device: str = DeviceOpt,
) -> None:
    """Score a pipeline on a labelled manifest: MCC, accuracy, per source, per tier, latency."""
    from workzone.evaluation.runner import build_report

    console = make_console(stderr=True)
    _, result, config = run_rows(manifest, pipeline, split, batch_size, run_all=False, what="evaluating",
                                 device=device)
    report = build_report(result, [t.name for t in config.tiers], config.name)
    _print_report(make_console(), report)
    if out:
        out.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"report written to {out}")
    if html or predictions:
        from workzone.cli.report import write_eval_outputs

        for line in write_eval_outputs(result, manifest, config, predictions=predictions, html=html):
            console.print(line)


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _print_report(console: Console, report: dict) -> None:
    table = Table(title=f"pipeline {report['pipeline']}")
    for col in ("subset", "n", "MCC", "acc", "precision", "recall", "specificity", "F1", "ROC-AUC"):
        table.add_column(col, justify="right" if col != "subset" else "left")
    rows = [("overall", report["overall"])] + list(report["per_source"].items())
    for name, r in rows:
        table.add_row(name, str(r["n"]), _fmt(r["mcc"]), _fmt(r["accuracy"]), _fmt(r["precision"]), _fmt(r["recall"]),
                      _fmt(r["specificity"]), _fmt(r["f1"]), _fmt(r["roc_auc"]))
    console.print(table)
    for name, r in rows:
        if r["mcc"] is None and r["n"]:
            only, metric = ("road work", "recall") if r["positives"] else ("images without road work", "specificity")
            console.print(f"[dim]{name}: only {only}, so MCC is undefined (-); its score is {metric} "
                          f"{_fmt(r[metric])}[/dim]")
    c = report["overall"]["confusion"]
    console.print(f"confusion: tp={c['tp']} fp={c['fp']} tn={c['tn']} fn={c['fn']}")
    console.print("exits per tier: " + ", ".join(f"{k} {v:.1%}" for k, v in report["tier_exits"].items())
                  + f"   (past tier 1: {report['past_tier_1']:.1%})")
    lat = report["latency_ms"]["per_batch"]
    console.print(f"throughput {report['images_per_s']:.2f} images/s; batch latency p50 {_fmt(lat['p50'])} ms, "
                  f"p95 {_fmt(lat['p95'])} ms, p99 {_fmt(lat['p99'])} ms; mean cost {report['cost_per_image']:.1f} ms/img")


@app.command()
def tune(
    manifest: Path = typer.Argument(..., help="labelled CSV manifest"),
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="pipeline to tune (name or YAML)"),
    out: Path = typer.Option(..., "--out", help="where to write the tuned pipeline YAML"),
    split: Optional[str] = typer.Option(None, help="rows to fit on; default: dev when present"),
    max_cost: Optional[float] = typer.Option(None, help="mean cost budget in ms per image"),
    l2: float = typer.Option(1e-2, min=0.0, help="ridge penalty of the fusion regressions"),
    balanced: bool = typer.Option(False, "--balanced/--no-balanced",
                                  help="fit fusion for a 50/50 class prior, not the manifest's class mix"),
    batch_size: int = typer.Option(8, min=1),
) -> None:
    """Fit fusion weights (logistic regression) and MCC-optimal exit thresholds; write the pipeline."""
    from workzone.config.loader import dump_pipeline
    from workzone.tuning import tune_pipeline

    rows, result, config = run_rows(manifest, pipeline, split, batch_size, run_all=True, what="running every stage")
    ok = [i for i, d in enumerate(result.decisions) if d is not None]
    tuned = tune_pipeline(config, [result.decisions[i] for i in ok], [rows[i].label for i in ok],
                          max_cost=max_cost, l2=l2, data_name=f"{manifest.name} split={split or 'dev'}",
                          balanced=balanced)
    text = dump_pipeline(tuned.config)
    from workzone.config.loader import parse_pipeline
    parse_pipeline(text, str(out))  # never write a file that would not load
    out.write_text(text, encoding="utf-8")
    s = tuned.summary
    con = make_console()
    con.print(f"tuned on {s['n']} images: MCC {s['mcc']:.4f}, mean cost {s['mean_cost_ms']:.1f} ms/img, "
              f"exit rates {s['exit_rates']}")
    for k, tier in enumerate(tuned.config.tiers):
        con.print(f"tier {k} '{tier.name}': bias {tier.fusion.bias:+.3f}, weights {tier.fusion.weights}, "
                  f"exit lower={tier.exit.lower} upper={tier.exit.upper}")
    for name, c in s["contribution"].items():
        con.print(f"  {name}: MCC without {c['mcc_without']:.4f} (delta {c['delta_mcc']:+.4f}), "
                  f"{c['cost_ms_per_image_when_run']:.1f} ms/img")
    con.print(f"written to {out}")


@app.command("list-stages")
def list_stages_cmd() -> None:
    """List the registered stage kinds."""
    from workzone.stages.registry import list_stages

    for k in list_stages():
        print(k)


@app.command("schema")
def schema_cmd(
    out: Optional[Path] = typer.Option(None, "--out", help="write the schema here instead of printing it"),
) -> None:
    """Print the pipeline file's JSON Schema (every registered stage kind), for editors and linters."""
    from workzone.config.json_schema import pipeline_json_schema

    text = json.dumps(pipeline_json_schema(), indent=2)
    if out is None:
        print(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")


def _register_subcommands() -> None:
    for mod in _COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:  # that command group is not part of this install
                continue
            raise
        module.register(app)


_register_subcommands()


def main() -> None:
    """Entry point: map WorkzoneError to a one-line message and exit code 1."""
    try:
        app()
    except WorkzoneError as exc:
        from rich.markup import escape

        # escape(): messages hold square brackets (pip install 'workzone[vlm]') that rich would eat.
        Console(stderr=True, highlight=False).print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(1)


if __name__ == "__main__":
    main()
