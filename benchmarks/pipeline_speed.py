"""Speed of a pipeline on this machine: images/s and latency per tier and per stage.

Usage:
    python benchmarks/pipeline_speed.py [--pipeline default] [--manifest ../shared/data/roadwork-v1/manifest.csv]
        [--split dev] [--limit 200] [--batch-size 8] [--out benchmarks/results/pipeline_speed.md]

Runs the cascade as users do (early exits on), after one warm-up batch, and writes a Markdown
results file with the machine described.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine  # noqa: E402

import workzone  # noqa: E402
from workzone.evaluation.metrics import matthews_corrcoef  # noqa: E402
from workzone.io.images import decode_image  # noqa: E402
from workzone.io.sources import read_manifest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="default")
    ap.add_argument("--manifest", default=str(Path(__file__).resolve().parents[2] / "shared/data/roadwork-v1/manifest.csv"))
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "pipeline_speed.md"))
    args = ap.parse_args()

    rows = read_manifest(args.manifest, splits=[args.split])
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in sorted(rng.permutation(len(rows))[: args.limit])]
    images = [decode_image(r.path) for r in rows]
    load_before = os.getloadavg()[0]  # the machine may be shared: the results file says how busy it was
    with workzone.load_pipeline(args.pipeline) as pipe:
        pipe.run_decoded(images[: args.batch_size])  # warm-up
        decisions, batch_ms = [], []
        t0 = time.perf_counter()
        for s in range(0, len(images), args.batch_size):
            tb = time.perf_counter()
            decisions += pipe.run_decoded(images[s:s + args.batch_size])
            batch_ms.append((time.perf_counter() - tb) * 1000)
        wall = time.perf_counter() - t0
        single = []
        for im in images[:30]:
            tb = time.perf_counter()
            pipe.run_decoded([im])
            single.append((time.perf_counter() - tb) * 1000)
        tiers = [t.name for t in pipe.config.tiers]
    load_after = os.getloadavg()[0]
    stage_ms = defaultdict(list)
    tier_ms = defaultdict(list)
    for d in decisions:
        per_tier = defaultdict(float)
        for s in d.stages:
            stage_ms[(s.tier, s.stage)].append(s.latency_ms)
            per_tier[s.tier] += s.latency_ms
        for k, v in per_tier.items():
            tier_ms[k].append(v)
    exits = np.bincount([d.exit_tier for d in decisions], minlength=len(tiers)) / len(decisions)
    mcc = matthews_corrcoef([r.label for r in rows], [int(d.label) for d in decisions])
    pct = lambda v, q: float(np.percentile(v, q))  # noqa: E731
    lines = [
        f"# Pipeline speed: `{args.pipeline}`", "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {describe_machine()}",
        f"- load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}",
        f"- data: {len(images)} images of split `{args.split}` of `{Path(args.manifest).parent.name}` (decoded before timing), batch size {args.batch_size}",
        f"- command: `python benchmarks/pipeline_speed.py --pipeline {args.pipeline} --split {args.split} --limit {args.limit} --batch-size {args.batch_size}`",
        "", "| measure | value |", "| --- | --- |",
        f"| throughput, batches of {args.batch_size} | {len(images) / wall:.2f} images/s |",
        f"| batch latency p50 / p95 / p99 | {pct(batch_ms, 50):.0f} / {pct(batch_ms, 95):.0f} / {pct(batch_ms, 99):.0f} ms |",
        f"| single-image latency p50 / p95 / p99 (30 images) | {pct(single, 50):.0f} / {pct(single, 95):.0f} / {pct(single, 99):.0f} ms |",
        f"| MCC on these images | {mcc:.3f} |", "",
        "| tier | exits here | images reaching it | ms per image in tier (p50 / p95) |", "| --- | --- | --- | --- |",
    ]
    reach = 1.0
    for k, name in enumerate(tiers):
        v = tier_ms.get(k, [])
        lat = f"{pct(v, 50):.1f} / {pct(v, 95):.1f}" if v else "-"
        lines.append(f"| {k + 1} `{name}` | {exits[k]:.1%} | {reach:.1%} | {lat} |")  # tiers count from 1
        reach -= exits[k]
    lines += ["", "| stage | tier | ms per image (p50 / p95), amortised over its batch |", "| --- | --- | --- |"]
    for (tier, stage), v in sorted(stage_ms.items()):
        lines.append(f"| `{stage}` | {tier + 1} | {pct(v, 50):.1f} / {pct(v, 95):.1f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"images_per_s": len(images) / wall, "mcc": mcc}))


if __name__ == "__main__":
    main()
