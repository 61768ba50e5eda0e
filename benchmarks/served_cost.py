"""Where a served image's time goes, against the in-process batched pipeline, on the torch path (issue 23 item 3).

default-gpu's detector through the torch backend on the CPU (the code the GPU server runs, less CUDA; ``--device
cuda`` on a GPU, where step times are mostly launch times, the device running behind until the copy to host), 224-px
JPEGs, at batch sizes 1, 8 and 64:

- *in process*: the batch decoded in this process (Pillow) and run by ``DetectionService.run`` (what the sync
  ``Pipeline`` and the bench's pipeline rows do);
- *served*: what ``workzone serve`` does per request: header probe and decode in the server's decoder processes
  (``DecodePool``, pickled back), then the batch through the micro-batcher (``detect_many`` of B concurrent
  requests).

Per step, ms per image (wall time of the step over the images it handled), and the torch operators each batch
dispatches (on CUDA each is a kernel launch with a fixed cost, so a count that does not grow with the batch is
the per-batch overhead that small served batches pay per image). Prints a markdown table.

    flock /work/notes/bench.lock python benchmarks/served_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from pathlib import Path
from collections import defaultdict
from contextlib import contextmanager

import numpy as np

from workzone.config.backend import with_backend
from workzone.config.loader import load_pipeline_config
from workzone.io.decode_pool import DecodePool
from workzone.io.images import ImageLimits
from workzone.micro_batcher import BatchPolicy
from workzone.service import DetectionService, ImageDecoder


#: The detector's path alone (default-gpu before its verifier tier): what this script's numbers were measured on.
OBJECTS_ONLY = Path(__file__).resolve().parent / "pipelines" / "objects-only-gpu.yaml"

def _jpegs(n: int, size: int = 224) -> list[bytes]:
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        px = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)  # smooth-ish content, like a frame
        buf = io.BytesIO()
        PILImage.fromarray(px).resize((size, size), PILImage.BILINEAR).save(buf, "JPEG", quality=75)
        out.append(buf.getvalue())
    return out


class Steps:
    """Wall time per named step (in total, ``s``, and per call, ``calls``), and torch operators dispatched, by
    wrapping the functions the steps are."""

    def __init__(self) -> None:
        self.s: dict[str, float] = defaultdict(float)
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.ops = 0

    @contextmanager
    def wrapped(self, targets: list[tuple[object, str, str]]):
        saved = []
        for obj, attr, name in targets:
            fn = getattr(obj, attr)
            saved.append((obj, attr, fn))

            def timed(*a, __fn=fn, __name=name, **k):
                t = time.perf_counter()
                try:
                    return __fn(*a, **k)
                finally:
                    took = time.perf_counter() - t
                    self.s[__name] += took
                    self.calls[__name].append(took)
            setattr(obj, attr, timed)
        try:
            yield
        finally:
            for obj, attr, fn in saved:
                setattr(obj, attr, fn)


@contextmanager
def count_ops(steps: Steps):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            steps.ops += 1
            return func(*args, **(kwargs or {}))

    with Count():
        yield


def _targets():
    from workzone.accel import objects
    from workzone.stages import roadwork_detector as rd

    D = objects.DeviceObjectDetector
    return [(D, "inputs", "as-trained + letterbox"), (D, "_decode", "box decode"), (D, "_decide", "decision"),
            (objects.ObjectBatch, "to_host", "to host"), (rd.RoadworkDetectorStage, "_summarise", "evidence"),
            (rd.RoadworkDetectorStage, "_predict_sync", "stage total")]


async def _measure(svc: DetectionService, blobs: list[bytes], batch: int, repeats: int, served: bool) -> dict:
    steps = Steps()
    runner = svc.cascade.stages[0]._model.torch_runner
    targets = _targets() + [(type(runner), "__call__", "detector network")]
    n = 0
    with steps.wrapped(targets):
        for r in range(repeats + 1):
            if r == 1:  # the first round warms shapes and the decoder processes
                steps.s.clear()
                n = 0
                # What the timed rounds compile or run for the first time (a served row 100x the in-process one on
                # CUDA, twice: bench_gpu.md 14:18 and 16:29 UTC, is the size of one re-trace; these say if it is).
                graphs0, cold0 = _graphs_compiled(), runner.cold_runs
            chunk = blobs[:batch]
            t = time.perf_counter()
            if served:
                async def one(b: bytes, k: int):
                    t0 = time.perf_counter()
                    budget = svc.decode_budget()
                    head = await svc.probe(b, f"r{k}", budget=budget)
                    t1 = time.perf_counter()
                    img = await svc.decode(b, f"r{k}", budget=budget, cost_s=head.cost_s)
                    t2 = time.perf_counter()
                    return img, t1 - t0, t2 - t1
                got = await asyncio.gather(*(one(b, k) for k, b in enumerate(chunk)))
                t_dec = time.perf_counter()
                steps.s["probe (per request, summed)"] += sum(g[1] for g in got)
                steps.s["decode (per request, summed)"] += sum(g[2] for g in got)
                steps.s["probe + decode (wall)"] += t_dec - t
                t_c = time.perf_counter()
                # B concurrent requests, as the server submits them (one client each): the batcher batches them.
                await asyncio.gather(*(svc.detect_many([g[0]], client=f"c{k}") for k, g in enumerate(got)))
                steps.s["batcher + cascade (wall)"] += time.perf_counter() - t_c
            else:
                images = svc.decoder.decode(chunk, [f"r{k}" for k in range(len(chunk))])
                t_dec = time.perf_counter()
                steps.s["decode (in process)"] += t_dec - t
                await svc.run(images)
                steps.s["cascade (wall)"] += time.perf_counter() - t_dec
            steps.s["total (wall)"] += time.perf_counter() - t
            n += len(chunk)
    return {"n": n, "ms": {k: 1000 * v / n for k, v in steps.s.items()},
            "compiled": _graphs_compiled() - graphs0, "cold": runner.cold_runs - cold0}


def _graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (0 without torch.compile)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


async def _ops_per_batch(svc: DetectionService, blobs: list[bytes], batch: int, served: bool) -> int:
    """The operators one batch dispatches, counted in this thread (a dispatch mode is per thread; the stage runs
    in a worker thread when served), with the images as this path hands them to the stage. Counted after every
    timing: a compiled module called under a dispatch mode may compile again, which must not land in a timed row."""
    steps = Steps()
    images = svc.decoder.decode(blobs[:batch]) if svc.decoder.defers(blobs[0]) or not served else [
        await svc.decode(b, "x") for b in blobs[:batch]]
    with count_ops(steps):
        svc.cascade.stages[0]._predict_sync(images)
    return steps.ops


async def _busy_loop(share: float, slice_s: float = 0.002) -> None:
    """Pure-Python work on the event loop for ``share`` of its time, in slices (parsing, routing, answers of
    other requests): it holds the GIL as the server's loop does under load."""
    import json

    doc = {"probability": 0.5, "evidence": [{"label": "cone", "score": 0.9, "box": [1, 2, 3, 4]}] * 8}
    while True:
        t = time.perf_counter()
        while time.perf_counter() - t < slice_s:
            json.loads(json.dumps(doc))
        await asyncio.sleep(slice_s * (1 - share) / share)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (JPEGs then decoded by nvJPEG, in batches)")
    ap.add_argument("--loop-busy", type=float, default=0.0,
                    help="share of the event loop's time spent in Python meanwhile (what HTTP requests cost it)")
    ap.add_argument("--switch-interval-ms", type=float, default=None, help="sys.setswitchinterval for the run")
    args = ap.parse_args()
    if args.switch_interval_ms is not None:
        import sys

        sys.setswitchinterval(args.switch_interval_ms / 1000)
    batches = args.batch or [1, 8, 64]
    blobs = _jpegs(max(batches), args.size)
    cfg, path = load_pipeline_config(str(OBJECTS_ONLY))
    cfg = with_backend(cfg, "torch")
    limits = ImageLimits()
    rows = []
    # One service for both paths: two services in one process compiled two copies of one module, and on CUDA the
    # second's served batches timed 100x the first's in-process ones (bench_gpu.md, 2026-12-07 09:40), where one
    # service serves them at the in-process cost (served_gap_cuda.md).
    processes = DecodePool(2, limits) if args.device == "cpu" else None
    svc = DetectionService.from_config(cfg, path.parent, device=args.device,
                                       policy=BatchPolicy(max_batch_size=64, max_wait_s=0.002),
                                       decoder=ImageDecoder(args.device, limits=limits, processes=processes))
    await svc.start(serving=True)
    try:
        for served in (False, True):
            busy = asyncio.create_task(_busy_loop(args.loop_busy)) if served and args.loop_busy else None
            try:
                for b in batches:
                    rows.append(("served" if served else "in process", b,
                                 await _measure(svc, blobs, b, args.repeats, served)))
            finally:
                if busy is not None:
                    busy.cancel()
        for path_name, b, r in rows:
            r["ops_per_batch"] = await _ops_per_batch(svc, blobs, b, path_name == "served")
    finally:
        await svc.aclose()
    import torch

    import sys

    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.size}-px JPEGs q75, "
          f"repeats {args.repeats} (after one warm-up round), served loop busy {args.loop_busy:.0%}, "
          f"switch interval {sys.getswitchinterval() * 1000:g} ms")
    keys = []
    for _, _, r in rows:
        keys += [k for k in r["ms"] if k not in keys]
    print("| path | batch | " + " | ".join(keys) + " | torch ops per batch | graphs compiled in the timed rounds | "
          "first runs of a shape in the timed rounds |")
    print("| --- | ---: | " + " | ".join("---:" for _ in keys) + " | ---: | ---: | ---: |")
    for path_name, b, r in rows:
        cells = [f"{r['ms'][k]:.2f}" if k in r["ms"] else "-" for k in keys]
        print(f"| {path_name} | {b} | " + " | ".join(cells) + f" | {r['ops_per_batch']:.0f} | {r['compiled']} | "
              f"{r['cold']} |")


if __name__ == "__main__":
    asyncio.run(main())
