"""The fixed, per-batch part of the device object path: operators dispatched and wall time of its steps on a
one-image batch of a tiny image (so that the arithmetic is negligible and the time is dispatch), on the CPU.

On a GPU every operator is also a kernel launch; this count is what a served batch of a few images pays per
batch. Prints one markdown table; run it against another checkout with PYTHONPATH=/that/checkout/src.

    flock /work/notes/bench.lock python benchmarks/dispatch_cost.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import workzone
from workzone.accel.jpeg_roundtrip import jpeg_roundtrip
from workzone.accel.objects import DeviceObjectDetector
from workzone.object_evidence import COUNT_AT, LOGIT_CLIP, ObjectDecision
from workzone.stages.roadwork_detector import ObjectDetectorRunner
from workzone.stages.base import StageContext


class _Count(TorchDispatchMode):
    n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        _Count.n += 1
        return func(*args, **(kwargs or {}))


def _measure(fn, repeats: int = 200) -> tuple[int, float]:
    fn()
    _Count.n = 0
    with _Count():
        fn()
    ops = _Count.n
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return ops, statistics.median(times) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    runner = ObjectDetectorRunner(StageContext().resolve("builtin:roadwork_objects.onnx"))
    det = DeviceObjectDetector.__new__(DeviceObjectDetector)
    det.decision, det.count_at, det.logit_clip = runner.decision, COUNT_AT, LOGIT_CLIP
    assert isinstance(det.decision, ObjectDecision)
    x = torch.randint(0, 256, (1, 3, 16, 16)).float()
    boxes = torch.rand(1, 100, 6) * torch.tensor([16, 16, 16, 16, 1, det.decision.num_classes - 1])
    boxes[..., 5] = boxes[..., 5].round()
    rows = [("JPEG-72 round trip (as trained)", lambda: jpeg_roundtrip(x, 72)),
            ("decision", lambda: det._decide(boxes, torch.tensor([100]), torch.tensor([16.0], dtype=torch.float64)))]
    print(f"workzone from {workzone.__file__}, torch {torch.__version__}, 1 thread, a 1-image batch of 16x16 px; "
          f"classes {det.decision.num_classes}")
    print("| step | torch operators per batch | median ms per batch (CPU, 200 runs) |")
    print("| --- | ---: | ---: |")
    for name, fn in rows:
        ops, ms = _measure(fn)
        print(f"| {name} | {ops} | {ms:.2f} |")


if __name__ == "__main__":
    np.random.seed(0)
    main()
