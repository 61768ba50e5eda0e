"""The ``workzone`` command line: detect, eval, tune (+ train, serve, plan from their own modules)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workzone.cli._common import load_rows, make_console, make_progress, run_rows
from workzone.errors import ConfigError, WorkzoneError

app = typer.Typer(name="workzone", help="Is there road work in this image? A calibrated probability with evidence.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

# Sub-command groups that live in their own modules; each exposes register(app).
_COMMAND_MODULES = ("workzone.cli.plan", "workzone.cli.serve", "workzone.cli.html_report", "workzone.cli.batch",
                    "workzone.cli.bench")
#: Entry point group of the `workzone train` commands: the lab (`workzone-train`, lab/ in this repository)
#: registers one entry point per command (name = command, value = the typer command function).
TRAIN_ENTRY_POINT_GROUP = "workzone.train"
_LAB_INSTALL = "pip install -e ./lab (the workzone-train distribution, in the repository's lab/ folder)"

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
    from workzone.answer import public_answer
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
                    decoded.extend(pipe.decode([p]))
                    kept.append(p)
                except InvalidImageError as exc:
                    failed += 1
                    if as_json:
                        print(json.dumps({"source": str(p), "error": str(exc)}))
                    else:
                        err.print(f"[red]skipped[/red] {escape(str(exc))}")
            for p, d in zip(kept, pipe.run_decoded(decoded, deadline_s=deadline)):
                if as_json:
                    print(json.dumps(public_answer(d), default=str))
                else:
                    _print_decision(out, d, together=len(decoded))
    if failed:
        raise typer.Exit(code=2)


def _print_decision(console: Console, d, together: int = 1) -> None:
    colour = "red" if d.label else "green"
    # A decision's latency is its batch's wall time until it exited: shared by the images decided together.
    took = (f"{d.latency_ms:.0f} ms" if together == 1 else
            f"{d.latency_ms / together:.0f} ms per image, {together} decided together in {d.latency_ms:.0f} ms")
    console.print(f"[bold]{d.source}[/bold]: [{colour}]{'ROAD WORK' if d.label else 'no road work'}[/{colour}] "
                  f"p={d.probability:.3f}  (decided after tier {d.exit_tier + 1} '{d.exit_tier_name}', {d.reason}, "
                  f"{took})")
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
        table.add_row(s.stage, str(s.tier + 1), prob, f"{s.latency_ms:.1f}", "; ".join(ev))
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
    if html:  # the plots are the last step: find a missing extra before the evaluation, not after it
        from workzone._optional import require_installed

        require_installed(["matplotlib"], "report", "eval --html")
    _, result, config = run_rows(manifest, pipeline, split, batch_size, run_all=False, what="evaluating",
                                 device=device)
    report = build_report(result, [t.name for t in config.tiers], config.name)
    _print_report(make_console(), report)
    if out:
        from workzone.io.atomic import atomic_write_text

        atomic_write_text(out, json.dumps(report, indent=2, default=str))
        console.print(f"report written to {out}")
    if html or predictions:
        from workzone.cli.html_report import write_eval_outputs

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
    manifest: Optional[Path] = typer.Argument(None, help="labelled CSV manifest (not needed with --scores)"),
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="pipeline to tune (name or YAML)"),
    out: Path = typer.Option(..., "--out", help="where to write the tuned pipeline YAML"),
    split: Optional[str] = typer.Option(None, help="rows to fit on; default: dev when present"),
    scores: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                          help="fit on these out-of-fold stage scores (`workzone train loso-scores`) "
                                               "instead of running the pipeline on MANIFEST"),
    max_cost: Optional[float] = typer.Option(None, help="mean cost budget in ms per image"),
    l2: float = typer.Option(1e-2, min=0.0, help="ridge penalty of the fusion regressions"),
    prior_weight: float = typer.Option(0.0, help="fusion weight the penalty shrinks towards (1: trust each stage's "
                                                 "calibrated log-odds unless the data disagree)"),
    balanced: bool = typer.Option(False, "--balanced/--no-balanced",
                                  help="fit fusion for a 50/50 class prior, not the manifest's class mix"),
    measure_costs: bool = typer.Option(False, "--measure-costs/--stored-costs",
                                       help="re-measure stage costs (minimum over repeats, robust to load) instead of "
                                            "using the `cost:` stored in the pipeline"),
    cost_images: Optional[Path] = typer.Option(None, help="with --measure-costs and --scores: images (folder) to time on; "
                                                          "default: the shipped samples"),
    batch_size: int = typer.Option(8, min=1),
    exits_out_of_fold: bool = typer.Option(True, "--exits-out-of-fold/--exits-in-sample",
                                           help="with --scores: choose exit thresholds on fused probabilities "
                                                "fitted without each image's fold (its `fold` column), so that an "
                                                "exit is only as confident as it is on sources the fusion never saw"),
    strict: bool = typer.Option(False, "--strict", help="write nothing when tuning warns (the budget costs more than "
                                                        "0.05 MCC, the set is small, a tier is never reached)"),
) -> None:
    """Fit fusion weights (logistic regression) and MCC-optimal exit thresholds; write the pipeline.

    Stage costs: the `cost:` stored in the pipeline (the same exits on any machine), or with
    --measure-costs the minimum over five timed runs of every stage (a busy machine only slows a
    run down, so the fastest repeat moves least). A stage with no stored cost is measured.
    """
    from workzone.api import load_pipeline
    from workzone.config.loader import dump_pipeline
    from workzone.evaluation.runner import run_manifest
    from workzone.tuning import measure_stage_costs, read_scores_csv, tune_scores

    console = make_console(stderr=True)
    with load_pipeline(pipeline) as pipe:
        config = pipe.config
        stages = [st for t in config.tiers for st in t.stages if st.enabled]
        stored = {st.name: float(st.cost) for st in stages if getattr(st, "cost", None) is not None}
        need_timing = measure_costs or len(stored) < len(stages)
        folds = None
        if scores is not None:
            sc, labels, folds = read_scores_csv(scores)
            folds = folds if exits_out_of_fold else None
            name = f"{scores.name} (out-of-fold)"
        else:
            if manifest is None:
                raise typer.BadParameter("give a MANIFEST, or --scores with out-of-fold stage scores")
            rows = load_rows(manifest, split, console)
            with make_progress(console) as bar:
                task = bar.add_task("running every stage", total=len(rows))
                result = run_manifest(pipe, rows, batch_size=batch_size, run_all=True,
                                      progress=lambda k: bar.advance(task, k))
            ok = [i for i, d in enumerate(result.decisions) if d is not None]
            from workzone.tuning import collect_scores

            sc, _ = collect_scores([result.decisions[i] for i in ok])
            labels = [rows[i].label for i in ok]
            name = f"{manifest.name} split={split or 'dev'}"
        latency, how = dict(stored), "stored in the pipeline"
        earlier = str((config.tuning or {}).get("costs") or "")
        if earlier and not need_timing:  # say how the stored costs were measured, once
            how = earlier if earlier.startswith("stored in the pipeline") else f"stored in the pipeline ({earlier})"
        if need_timing:
            from workzone.io.images import decode_image
            from workzone.io.sources import iter_image_paths

            src = [cost_images] if cost_images else [Path(__file__).resolve().parents[3] / "samples"]
            paths = list(iter_image_paths([str(p) for p in src]))[:16] if src[0].exists() else []
            if not paths and scores is None:
                paths = [r.path for r in rows[:16]]
            if not paths:
                raise typer.BadParameter("no images to time stages on: pass --cost-images FOLDER")
            images = [decode_image(str(p)) for p in paths] * max(1, 16 // max(1, len(paths)))
            measured = measure_stage_costs(lambda ims: pipe.run_decoded(ims, run_all=True), images, repeats=5)
            latency = measured if measure_costs else {**measured, **stored}
            how = "minimum over 5 timed runs" if measure_costs else "stored in the pipeline; missing ones measured"
    tuned = tune_scores(config, sc, labels, latency, max_cost=max_cost, l2=l2, data_name=name, balanced=balanced,
                        prior_weight=prior_weight, costs_measured=how, folds=folds)
    warnings = list(tuned.summary.get("warnings", []))
    warnings += [f"tier {t!r} is never reached under --max-cost {max_cost}: raise the budget or drop the tier"
                 for t in tuned.summary.get("unreachable_tiers", [])]
    if strict and warnings:
        raise ConfigError(f"tune --strict: {out} not written: " + "; ".join(warnings))
    text = dump_pipeline(tuned.config)
    from workzone.config.loader import parse_pipeline
    parse_pipeline(text, str(out))  # never write a file that would not load
    from workzone.io.atomic import atomic_write_text

    atomic_write_text(out, text)
    s = tuned.summary
    con = make_console()
    con.print(f"tuned on {s['n']} images: MCC {s['mcc']:.4f}, mean cost {s['mean_cost_ms']:.1f} ms/img, "
              f"exit rates {s['exit_rates']}; costs {how}")
    for w in warnings:
        con.print(f"[yellow]warning: {escape(w)}[/yellow]")
    for k, tier in enumerate(tuned.config.tiers, start=1):
        con.print(f"tier {k} '{tier.name}': bias {tier.fusion.bias:+.3f}, weights {tier.fusion.weights}, "
                  f"exit lower={tier.exit.lower} upper={tier.exit.upper}")
    for name, c in s["contribution"].items():
        con.print(f"  {name}: MCC without {c['mcc_without']:.4f} (delta {c['delta_mcc']:+.4f}), "
                  f"{c['cost_ms_per_image_when_run']:.1f} ms/img")
    if "exit_tiers" in s:
        tried = "; ".join(f"{', '.join(c['may_exit']) or 'none'}: MCC {c['out_of_fold_mcc']:.4f} at "
                          f"{c['mean_cost_ms']:.1f} ms/img" for c in s["exit_tiers"]["candidates"])
        con.print(f"tiers that may exit, chosen out of fold: {', '.join(s['exit_tiers']['chosen']) or 'none'} "
                  f"(tried {tried})")
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


def train_group(group: str = TRAIN_ENTRY_POINT_GROUP) -> typer.Typer:
    """The `train` group: every command the installed lab registers, or a pointer to the lab when none is."""
    from importlib.metadata import entry_points

    commands = sorted(entry_points(group=group), key=lambda ep: ep.name)
    group = typer.Typer(no_args_is_help=bool(commands),
                        help="Reproduce the shipped models (the lab, workzone-train)." if commands else
                        f"Reproduce the shipped models: needs the lab, {_LAB_INSTALL}.")
    for ep in commands:
        fn = ep.load()
        # A command that parses its own arguments says so with a `context_settings` attribute.
        group.command(ep.name, context_settings=getattr(fn, "context_settings", None))(fn)
    if not commands:
        @group.callback(invoke_without_command=True)
        def _no_lab() -> None:
            raise WorkzoneError(f"the training commands are not installed: {_LAB_INSTALL}")
    return group


def _register_subcommands() -> None:
    for mod in _COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:  # that command group is not part of this install
                continue
            raise
        module.register(app)
    app.add_typer(train_group(), name="train")


_register_subcommands()


def main() -> None:
    """Entry point: map WorkzoneError to a one-line message and exit code 1."""
    try:
        app()
    except WorkzoneError as exc:
        # escape(): messages hold square brackets (pip install 'workzone[vlm]') that rich would eat.
        # soft_wrap: off a terminal (a log, a pipe) the message stays one line, never cut at 80 columns.
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(1)


if __name__ == "__main__":
    main()
