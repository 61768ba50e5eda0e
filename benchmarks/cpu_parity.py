"""Does the CPU run scheme change any answer? Writes results/cpu_parity.md.

The default pipeline decides the 469 dev images of roadwork-v1 twice from the same JPEG bytes: as shipped (the
detector's and verifier's runs spread over the cores by image, one onnxruntime thread each, runs of one image)
and with the scheme before issue 23 (batches of 8 in runs of 4, one run at a time over every intra-op thread).
The probabilities are compared image by image. Run: python benchmarks/cpu_parity.py [DATA] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np

from workzone.throughput.machine import describe_machine
from workzone.throughput.parity import OPERATOR_SCHEME, cpu_scheme_parity, dev_jpegs

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(HERE.parents[1] / "shared" / "data" / "roadwork-v1"))
    ap.add_argument("--out", default=str(HERE / "results" / "cpu_parity.md"))
    args = ap.parse_args()
    items = dev_jpegs(args.data)
    t = time.perf_counter()
    report, before, now = cpu_scheme_parity(items, reference=OPERATOR_SCHEME)
    seconds = time.perf_counter() - t
    machine = describe_machine("cpu")
    same = int((before == now).sum())
    text = "\n".join([
        "# The CPU run scheme against the one before it: same answers?",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Command: `python benchmarks/cpu_parity.py {args.data}`",
        "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
        f"Pipeline `default` on the {report.n} dev images of {Path(args.data).name}, from the same JPEG bytes, "
        f"batches of 8: as shipped (runs of one image spread over the cores, one onnxruntime thread each) against "
        f"the scheme before issue 23 (`{OPERATOR_SCHEME}` on the detector and the verifier).",
        "",
        "| compared | images | bit-identical probabilities | within 0.02 | max abs dp | decisions that differ |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| shipped vs before | {report.n} | {same} | {report.within:.1%} | {report.max_abs:.2g} | {report.flips} |",
        "",
        f"Both runs took {seconds:.0f} s together (not a timing).",
        "",
    ])
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    if report.flips or not np.array_equal(before, now):
        raise SystemExit("the schemes differ")


if __name__ == "__main__":
    main()
