"""``workzone check`` and ``workzone plan``: is a pipeline runnable here, and how does it fit on GPUs."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workzone.cli._common import make_console
from workzone.errors import ConfigError

__all__ = ["register", "check", "plan"]

_SERVERS = ("vllm", "sglang", "lmdeploy")


def _console(stderr: bool = False) -> Console:
    # The plan and check tables are wider than the others.
    return make_console(stderr, piped_width=200)


def check(
    pipeline: str = typer.Argument(..., help="built-in pipeline name or YAML file"),
    endpoints: bool = typer.Option(False, "--endpoints", help="also GET {base_url}/models of every remote stage"),
    timeout: float = typer.Option(5.0, help="seconds per endpoint request"),
) -> None:
    """Validate a pipeline: shape and kinds, installed extras, model files, and (optionally) endpoints."""
    from workzone.config.loader import load_pipeline_config
    from workzone.checking import check_pipeline

    out = _console()
    try:
        config, path = load_pipeline_config(pipeline)
    except ConfigError as exc:
        out.print(f"[red]invalid:[/red] {escape(str(exc))}")
        raise typer.Exit(code=1) from None
    rows = check_pipeline(config, path.parent, endpoints=endpoints, timeout_s=timeout)
    table = Table(title=f"{config.name} ({path})", show_lines=False)
    for col in ("stage", "kind", "check", "result", "detail"):
        table.add_column(col)
    for r in rows:
        mark = "[green]ok[/green]" if r.ok else ("[red]problem[/red]" if r.ok is False else "[dim]skipped[/dim]")
        table.add_row(escape(r.stage), r.kind, r.check, mark, escape(r.detail))
    out.print(table)
    problems = [r for r in rows if r.ok is False]
    n_stages = sum(len(t.stages) for t in config.tiers)
    if problems:
        out.print(f"[red]{len(problems)} problem(s)[/red] in {n_stages} stages over {len(config.tiers)} tiers")
        raise typer.Exit(code=1)
    out.print(f"[green]pipeline valid[/green]: {n_stages} stages over {len(config.tiers)} tiers")


def plan(
    pipeline: str = typer.Argument(..., help="built-in pipeline name or YAML file"),
    gpus: str = typer.Option(..., "--gpus", help="GPUs as COUNTxMEMORY, e.g. 2x80GB"),
    quant: str = typer.Option("none", "--quant", help="weights of VLM/LLM engines without their own engine: block: none, fp8, int8, awq, gptq, nvfp4"),
    server: Optional[List[str]] = typer.Option(None, "--server", help="launch commands for: vllm, sglang, lmdeploy"),
    reserve: float = typer.Option(1.0, "--reserve-gb", help="GB per GPU kept free (CUDA context, fragmentation)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Estimate per-stage GPU memory, place stages on GPUs, and print engine launch commands."""
    from workzone.config.loader import load_pipeline_config
    from workzone.planning import describe_item, launch_commands, parse_gpus, plan_pipeline

    out, err = _console(), _console(stderr=True)
    servers = tuple(server or _SERVERS)
    try:
        if quant not in ("none", "fp8", "int8", "awq", "gptq", "nvfp4"):
            raise ConfigError(f"--quant: expected none, fp8, int8, awq, gptq or nvfp4, got {quant!r}")
        bad = [s for s in servers if s not in _SERVERS]
        if bad:
            raise ConfigError(f"--server: expected vllm, sglang or lmdeploy, got {bad}")
        config, _ = load_pipeline_config(pipeline)
        result = plan_pipeline(config, parse_gpus(gpus), quant, reserve)  # type: ignore[arg-type]
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=1) from None
    commands = launch_commands(result, servers)
    if as_json:
        print(json.dumps({"gpus": {"count": result.gpus.count, "memory_gb": result.gpus.memory_gb},
                          "quant": quant, "items": [describe_item(i) for i in result.items],
                          "used_gb": [round(u, 2) for u in result.used], "cpu_stages": result.cpu_stages,
                          "warnings": result.warnings,
                          "commands": [{"engine": e, "server": s, "command": c} for e, s, c in commands]}, indent=2))
        return
    table = Table(title=f"{config.name}: GPU memory plan on {result.gpus.count} x {result.gpus.memory_gb:g} GB "
                        f"(quant {quant}; estimates)")
    for col in ("stages", "kind", "model"):
        table.add_column(col)
    for col in ("params (B)", "weights", "activ.", "KV cache", "overhead", "total", "GPU", "TP"):
        table.add_column(col, justify="right")
    for it in sorted(result.items, key=lambda i: (i.gpus[:1], -i.total_gb)):
        size = "?" if it.spec is None else f"{it.spec.params_b:.3g}"
        table.add_row(escape(", ".join(it.stages)), it.kind, escape(it.model), size,
                      f"{it.weights_gb:.1f}", f"{it.act_gb:.1f}", f"{it.kv_gb:.1f}", f"{it.overhead_gb:.1f}",
                      f"{it.total_gb:.1f}", ",".join(map(str, it.gpus)), str(it.tp))
    out.print(table)
    usage = ", ".join(f"GPU{g}: {u:.1f}/{result.gpus.memory_gb:g} GB" for g, u in enumerate(result.used))
    out.print(f"used: {usage} (plus {result.reserve_gb:g} GB reserve each)")
    if result.cpu_stages:
        out.print(f"on CPU: {', '.join(result.cpu_stages)}")
    for w in result.warnings:
        out.print(f"[yellow]warning:[/yellow] {escape(w)}")
    for engine, srv, cmd in commands:
        out.print(f"\n[bold]{srv}[/bold] for {engine}:")
        print(cmd)


def register(app: typer.Typer) -> None:
    """Add ``check`` and ``plan`` to the ``workzone`` app."""
    app.command("check")(check)
    app.command("plan")(plan)
