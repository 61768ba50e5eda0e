"""What free height and width axes cost the object detector on the CPU. Writes results/dynamic_axes.md.

The shipped ``roadwork_objects.onnx`` is exported with dynamic axes (``n, 3, h, w``) so that one graph serves any
input size. onnxruntime then plans its kernels for unknown shapes; ``open_session(..., spatial=S)`` fixes ``h`` and
``w`` to the one size a runner feeds. This times the bare session (one onnxruntime thread, runs of one image: the
shipped scheme's cost per worker) on 32 dev images both ways, each in fresh processes, and checks the outputs are
the same bits.
Run: flock /work/notes/bench.lock python benchmarks/dynamic_axes.py [DATA]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from workzone.io.images import decode_image
from workzone.stages._onnx import open_session
from workzone.stages.base import StageContext
from workzone.stages.roadwork_detector import ObjectDetectorRunner
from workzone.throughput.machine import describe_machine
from workzone.throughput.parity import dev_jpegs

HERE = Path(__file__).resolve().parent


def one(data: str, fixed: bool) -> tuple[float, list[np.ndarray], list]:
    """CPU-ms per image (fastest of 3) of one session, its outputs, and its input axes, in this process."""
    model = StageContext().resolve("builtin:roadwork_objects.onnx")
    runner = ObjectDetectorRunner(model, threads=1)
    xs = [runner._inputs([decode_image(b)]) for _, b in dev_jpegs(data)[:32]]
    session = open_session(model, threads=1, spatial=runner.size if fixed else None)
    outs = [session.run(None, {"image": x})[0] for x in xs]
    best = float("inf")
    for _ in range(3):
        c = time.process_time()
        for x in xs:
            session.run(None, {"image": x})
        best = min(best, (time.process_time() - c) / len(xs) * 1000.0)
    return best, outs, session.get_inputs()[0].shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default="../shared/data/roadwork-v1")
    ap.add_argument("--out", default=str(HERE / "results" / "dynamic_axes.md"))
    ap.add_argument("--child", choices=["free", "fixed"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        ms, outs, _ = one(args.data, args.child == "fixed")
        np.save(sys.stdout.buffer, np.concatenate(outs))
        sys.stderr.write(f"CPU_MS {ms}\n")
        return
    # Each session in a fresh process, alternating: sessions of one graph in one process were seen to influence
    # each other's speed, so none shares a process here.
    best = {"free": float("inf"), "fixed": float("inf")}
    outs = {}
    for _ in range(3):
        for kind in best:
            done = subprocess.run([sys.executable, __file__, args.data, "--child", kind], capture_output=True,
                                  check=True)
            best[kind] = min(best[kind], float(done.stderr.decode().rsplit("CPU_MS ", 1)[1].split()[0]))
            outs[kind] = np.load(io.BytesIO(done.stdout))
    same = np.array_equal(outs["free"], outs["fixed"])
    shape = open_session(StageContext().resolve("builtin:roadwork_objects.onnx"), threads=1).get_inputs()[0].shape
    machine = describe_machine("cpu")
    lines = ["# The object detector with free or fixed spatial axes (onnxruntime, CPU)", "",
             f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- Command: `flock /work/notes/bench.lock python benchmarks/dynamic_axes.py {args.data}`",
             "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
             f"`roadwork_objects.onnx` input axes: {shape}. Bare session, one onnxruntime thread, runs of one "
             "384-px image (the shipped scheme's cost per worker), 32 dev images, CPU time: fastest of 3 in each of "
             "3 fresh processes per variant, alternating.", "",
             "| session | CPU-ms per image |", "| --- | ---: |",
             f"| h, w left free | {best['free']:.1f} |", f"| h, w fixed to 384 (`open_session(spatial=384)`) | "
             f"{best['fixed']:.1f} |", "", f"Outputs bit-identical both ways: {'yes' if same else 'NO'}.", ""]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
