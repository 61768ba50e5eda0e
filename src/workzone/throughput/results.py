"""Write ``workzone bench`` results: a Markdown table and a JSON file, both stating the machine."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Sequence

from workzone.throughput.runs import Row

__all__ = ["write_results", "decode_ratios"]


def write_results(rows: Sequence[Row], machine: dict[str, str], out: Path, *, command: str,
                  title: str = "workzone bench") -> tuple[Path, Path]:
    """Write ``out`` (Markdown) and ``out`` with ``.json``; returns both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {title}", "", f"- Date: {when}", f"- Command: `{command}`",
             "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
             "- x decode: the row's images/s over the decode-only rate of the same inputs on the same device "
             "(nvJPEG batched on CUDA, Pillow on one thread on the CPU), measured in the same run", "",
             "| run | device | input | batch | images/s | x decode | images per CPU-s | batch p50 ms | batch p95 ms | notes |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    ratios = decode_ratios(rows)
    for r, ratio in zip(rows, ratios):
        per_cpu = f"{r.images_per_cpu_s:,.0f}" if r.cpu_s else "-"
        x = f"{ratio:.3f}" if ratio is not None else "-"
        lines.append(f"| {r.name} | {r.device} | {r.size} | {r.batch} | {r.images_per_s:,.0f} | {x} | {per_cpu} | "
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
                              "rows": [r.to_dict() | {"x_decode": x} for r, x in zip(rows, ratios)]},
                             indent=2) + "\n", encoding="utf-8")
    return out, js


def decode_ratios(rows: Sequence[Row]) -> list[float | None]:
    """Each row's images/s over the decode-only row of the same input and device (the first such row:
    nvJPEG alone on CUDA, Pillow on the CPU); ``None`` where there is none or the row has no rate.

    Examples:
        >>> rows = [Row("decode to device", "cuda", "224", 8, 100, 1.0, 1, 1), Row("p", "cuda", "224", 8, 25, 1.0, 1, 1)]
        >>> decode_ratios(rows)
        [1.0, 0.25]
    """
    base: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.name.startswith(("decode to device", "decode (Pillow")) and r.images_per_s > 0:
            base.setdefault((r.device, r.size), r.images_per_s)
    return [r.images_per_s / base[(r.device, r.size)] if (r.device, r.size) in base and r.images_per_s > 0 else None
            for r in rows]
