"""Write ``workzone bench`` results: a Markdown table and a JSON file, both stating the machine."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Sequence

from workzone.bench.runs import Row

__all__ = ["write_results"]


def write_results(rows: Sequence[Row], machine: dict[str, str], out: Path, *, command: str,
                  title: str = "workzone bench") -> tuple[Path, Path]:
    """Write ``out`` (Markdown) and ``out`` with ``.json``; returns both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {title}", "", f"- Date: {when}", f"- Command: `{command}`",
             "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
             "| run | device | input | batch | images/s | images per CPU-s | batch p50 ms | batch p95 ms | notes |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        per_cpu = f"{r.images_per_cpu_s:,.0f}" if r.cpu_s else "-"
        lines.append(f"| {r.name} | {r.device} | {r.size} | {r.batch} | {r.images_per_s:,.0f} | {per_cpu} | "
                     f"{r.batch_ms_p50:.1f} | {r.batch_ms_p95:.1f} | {r.notes} |")
    staged = [r for r in rows if r.stages]
    if staged:
        lines += ["", "## Per stage", "", "| run | input | stage | measure |", "| --- | --- | --- | --- |"]
        for r in staged:
            for stage, vals in r.stages.items():
                text = ", ".join(f"{k} {v:.3g}" for k, v in vals.items())
                lines.append(f"| {r.name} | {r.size} | {stage} | {text} |")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    js = out.with_suffix(".json")
    js.write_text(json.dumps({"date": when, "command": command, "machine": machine,
                              "rows": [r.to_dict() for r in rows]}, indent=2) + "\n", encoding="utf-8")
    return out, js
