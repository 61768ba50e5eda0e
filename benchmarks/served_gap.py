"""Why a served batch costs ~100x the same batch in process on CUDA (issue 23), one suspect switched off at a time.

`served_cost.py --device cuda` (bench_gpu.md, 2026-12-07) timed the detector network at 362 ms for a served one-image
batch against 3.2 ms in process, with the same runner, shapes and operators. The served path does two things the
in-process path does not: it runs the micro-batcher, and after a batch that leaves the queue empty it trims the heap
(``malloc_trim`` in the trimmer's thread, at most every 2 s). A trim walks every glibc arena holding that arena's lock,
and in a process with CUDA, cuDNN and inductor loaded the heap is large: a thread that allocates meanwhile (the compute
thread, for every tensor's host-side bookkeeping) waits for it.

This script times, on one warmed service (``objects-only-gpu``, default-gpu's detector alone, through the torch backend,
micro-batches of up to 8):

- ``malloc_trim(0)`` alone, three times, with the process's resident size;
- batches of B concurrent one-image requests through ``detect_many`` (what ``workzone serve`` does), back to back for
  ``--seconds``: as served, then with the trim after an emptied queue switched off;
- the same images decoded and run in process (``DetectionService.run``);
- with ``--contention``: served batches while the event loop spends a share of its time in Python (what parsing
  and answering HTTP requests costs the server's one loop), at the default GIL switch interval (5 ms) and shorter.
  Each torch operator the compute thread dispatches releases the GIL and must win it back from the loop.

Per variant: batches, median and p90 ms per batch, the detector network's ms per batch (its runner, wall), and the
trims that ran meanwhile with their durations. Prints a markdown table.

    python benchmarks/served_gap.py --device cuda [--seconds 6] [--batch 1 --batch 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from workzone import _memory
from workzone.config.backend import with_backend
from workzone.config.loader import load_pipeline_config
from workzone.io.images import ImageLimits
from workzone.micro_batcher import BatchPolicy
from workzone.service import DetectionService, ImageDecoder

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from served_cost import Steps, _busy_loop, _jpegs  # noqa: E402 - the served-cost table's JPEGs, timer, busy loop


#: The detector's path alone (default-gpu before its verifier tier): what this script's numbers were measured on.
OBJECTS_ONLY = Path(__file__).resolve().parent / "pipelines" / "objects-only-gpu.yaml"

def _ms(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))]


async def _variant(svc: DetectionService, blobs: list[bytes], batch: int, seconds: float, how: str,
                   busy: float = 0.0, switch_ms: float | None = None) -> dict:
    runner = svc.cascade.stages[0]._model.torch_runner
    saved_trim = svc._trimmer.maybe_trim
    if how == "served, no trim":
        svc._trimmer.maybe_trim = lambda in_thread=False: False  # type: ignore[method-assign]
    times: list[float] = []
    interval = sys.getswitchinterval()
    if switch_ms is not None:
        sys.setswitchinterval(switch_ms / 1000)
    spinner = asyncio.create_task(_busy_loop(busy)) if busy else None
    try:
        steps = Steps()
        with steps.wrapped([(type(runner), "__call__", "net"), (_memory, "release_free_memory", "trim")]):
            end = time.perf_counter() + seconds
            k = 0
            while time.perf_counter() < end or len(times) < 3:
                chunk = blobs[:batch]
                t = time.perf_counter()
                if how == "in process":
                    await svc.run(svc.decoder.decode(chunk, [f"r{k}-{i}" for i in range(len(chunk))]))
                else:
                    imgs = []
                    for i, b in enumerate(chunk):
                        budget = svc.decode_budget()
                        head = await svc.probe(b, f"r{k}-{i}", budget=budget)
                        imgs.append(await svc.decode(b, f"r{k}-{i}", budget=budget, cost_s=head.cost_s))
                    await asyncio.gather(*(svc.detect_many([im], client=f"c{i}") for i, im in enumerate(imgs)))
                times.append(time.perf_counter() - t)
                k += 1
    finally:
        svc._trimmer.maybe_trim = saved_trim  # type: ignore[method-assign]
        sys.setswitchinterval(interval)
        if spinner is not None:
            spinner.cancel()
    if busy:
        how += f", loop busy {busy:.0%}"
    if switch_ms is not None:
        how += f", switch interval {switch_ms:g} ms"
    return {"how": how, "batch": batch, "batches": len(times), "p50": _ms(times, 0.5), "p90": _ms(times, 0.9),
            "net_per_batch": 1000 * steps.s["net"] / max(1, len(times)), "trims": steps.calls["trim"]}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--contention", action="store_true",
                    help="only the GIL variants: served with the event loop busy in Python (what HTTP requests cost "
                         "it), at the default switch interval and at 0.5 ms")
    args = ap.parse_args()
    batches = args.batch or [1, 8]
    blobs = _jpegs(max(batches))
    cfg, path = load_pipeline_config(str(OBJECTS_ONLY))
    cfg = with_backend(cfg, "torch")
    limits = ImageLimits()
    svc = DetectionService.from_config(cfg, path.parent, device=args.device,
                                       policy=BatchPolicy(max_batch_size=max(batches), max_wait_s=0.002),
                                       decoder=ImageDecoder(args.device, limits=limits))
    t = time.perf_counter()
    await svc.start(serving=True)
    print(f"service warmed in {time.perf_counter() - t:.1f} s")
    import torch

    rss = _memory.resident_bytes() or 0
    trim_alone = []
    for _ in range(3):
        t = time.perf_counter()
        _memory.release_free_memory()
        trim_alone.append(1000 * (time.perf_counter() - t))
    print(f"device {args.device} ({torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}), torch "
          f"{torch.__version__}; resident {rss / 2**30:.2f} GiB; malloc_trim(0) alone: "
          + ", ".join(f"{x:.1f}" for x in trim_alone) + " ms")
    rows = []
    try:
        for b in batches:
            variants = [("served", 0.0, None), ("served, no trim", 0.0, None), ("in process", 0.0, None),
                        ("served", 0.0, None)]
            if args.contention:
                variants = [("served", 0.0, None), ("served", 0.5, None), ("served", 0.5, 0.5), ("served", 0.9, None),
                            ("served", 0.9, 0.5), ("served", 0.9, 0.1)]
            for how, busy, switch_ms in variants:
                rows.append(await _variant(svc, blobs, b, args.seconds, how, busy, switch_ms))
                r = rows[-1]
                print(f"  {r['how']} batch {b}: {r['batches']} batches, p50 {r['p50']:.1f} ms", flush=True)
    finally:
        await svc.aclose()
    print("\n| path | batch | batches | ms per batch p50 | p90 | detector network ms per batch | trims (ms each) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        trims = ", ".join(f"{1000 * x:.0f}" for x in r["trims"]) or "none"
        print(f"| {r['how']} | {r['batch']} | {r['batches']} | {r['p50']:.1f} | {r['p90']:.1f} | "
              f"{r['net_per_batch']:.1f} | {trims} |")


if __name__ == "__main__":
    asyncio.run(main())
