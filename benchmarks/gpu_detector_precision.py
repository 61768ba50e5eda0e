"""default-gpu's parity with the CPU path, with the detector in fp16 (as shipped) and in fp32 (issue 23, item 2).

Usage (on the GPU machine, after `source benchmarks/gpu_env.sh`):
    python3 benchmarks/gpu_detector_precision.py --data .gpu/roadwork-v1 --out $OUT/gpu_detector_precision.md

Why: the verifier's fp16 graph over the same crops keeps every dev image within 0.02 of onnxruntime's
(gpu_verifier_profile.md), and the CPU replay of small box moves (verifier_box_sensitivity.md) says that what is
left is the detector's boxes. Its stage takes ``precision``: this runs default-gpu both ways, JPEGs decoded by
libjpeg (the reference's pixels) and by nvJPEG, and reports each against onnxruntime on the CPU, with the time of
each whole parity call (469 images in batches of 256; one run, not a bench).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _machine import describe_machine
from _report import publish
from workzone.config.backend import with_stage_params
from workzone.config.loader import dump_pipeline, load_pipeline_config
from workzone.throughput.parity import dev_jpegs, object_parity


def pipeline_with_detector_precision(precision: str, folder: Path) -> Path:
    """A copy of default-gpu whose detector stage (``objects``) runs at ``precision`` on the torch backend."""
    cfg, _ = load_pipeline_config("default-gpu")
    out = folder / f"default-gpu-detector-{precision}.yaml"
    out.write_text(dump_pipeline(with_stage_params(cfg, {"objects": {"precision": precision}})), encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="roadwork-v1 (its dev split)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script (no nvJPEG row)")
    ap.add_argument("--limit", type=int, default=None, help="images of the dev split (default: all)")
    args = ap.parse_args()
    items = dev_jpegs(args.data, limit=args.limit)
    lines = ["# default-gpu against the CPU path, detector in fp16 and in fp32", "",
             f"- Command: `python3 benchmarks/gpu_detector_precision.py --data {args.data}`",
             f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- Machine: {describe_machine()}",
             f"- {len(items)} dev images of roadwork-v1; reference: the same pipeline on onnxruntime (CPU, fp32); "
             "the verifier runs its fp32 graph on both sides", "",
             "| detector precision | decode | images within 0.02 | max abs dp | decisions differ "
             "| of them away from 0.5 | parity call s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("float16", "float32"):
            pipe = str(pipeline_with_detector_precision(precision, Path(tmp)))
            for share, decode in ((1.0, "libjpeg"), (0.0, "nvJPEG"))[:1 if args.device == "cpu" else 2]:
                t0 = time.perf_counter()
                report, _, _ = object_parity(items, device=args.device, pipeline=pipe, batch=256, cpu_share=share)
                took = time.perf_counter() - t0
                print(precision, decode, report.describe(), flush=True)
                lines.append(f"| {precision} | {decode} | {report.within:.1%} | {report.max_abs:.4f} | {report.flips} "
                             f"| {report.flips_outside} | {took:.1f} |")
    lines += ["", "parity call s: the whole call, onnxruntime reference included, one run: not a throughput (that is "
              "`workzone bench`)."]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
