"""Event-loop lag of a DetectionService serving default-gpu's detector on the torch path (here on the CPU) while
single requests come 0.5 s apart, so that its queue runs empty after each (the service then gives freed memory
back to the system): a loop that stops delays every request that arrives meanwhile. Prints one line.

    flock /work/notes/bench.lock python benchmarks/loop_lag.py
    # against another checkout: PYTHONPATH=/path/to/other/src python benchmarks/loop_lag.py
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from workzone.config.loader import load_pipeline_config
from workzone.config.backend import with_backend
from workzone.service import DetectionService
from workzone.types import Image


#: The detector's path alone (default-gpu before its verifier tier): what this script's numbers were measured on.
OBJECTS_ONLY = Path(__file__).resolve().parent / "pipelines" / "objects-only-gpu.yaml"

async def main():
    cfg, path = load_pipeline_config(str(OBJECTS_ONLY))
    svc = DetectionService.from_config(with_backend(cfg, "torch"), path.parent)
    await svc.start()
    img = Image(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    lags = []
    stop = False

    async def tick():
        while not stop:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    task = asyncio.create_task(tick())
    for _ in range(16):
        await svc.detect(img, client="a")
        await asyncio.sleep(0.5)
    stop = True
    await task
    await svc.aclose()
    a = np.array(lags) * 1000
    print(f"loop lag over {len(a)} ticks: p50 {np.percentile(a, 50):.1f} ms, p99 {np.percentile(a, 99):.1f} ms, "
          f"max {a.max():.1f} ms, ticks late > 100 ms: {(a > 100).sum()}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
