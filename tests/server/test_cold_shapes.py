"""The first run of a batch shape (a torch.compile, a kernel choice) is the server's start-up, not what
its clients' images cost: every shape the server will serve runs before it is ready, and a batch beside
one that was missed is charged to nobody (issue 23: one H100 answered 9 requests/s at 1,000/s once its
clients were moved to the one-image lane)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from pydantic import Field

from server_support import write_pipeline
from workzone.client_costs import ClientCosts
from workzone.micro_batcher import BatchPolicy
from workzone.service import DetectionService
from workzone.stages.base import Stage, StageParams
from workzone.stages.registry import register_stage
from workzone.throughput.http import refusal_counts
from workzone.types import EarlierReports, Evidence, Image, StageOutput


class FirstRunParams(StageParams):
    first_run_s: float = Field(default=1.0, ge=0, description="seconds the first batch of each size takes")


@register_stage("test_first_runs", replace=True)
class FirstRunStage(Stage):
    """Each batch size's first run takes ``first_run_s`` (as a compile does); later runs are instant. It
    warms nothing, as a stage whose shapes are too many to warm (eager torch on the CPU)."""

    Params = FirstRunParams
    params: FirstRunParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sizes: set[int] = set()

    @property
    def cold_runs(self) -> int:
        return len(self.sizes)

    async def predict(self, batch: Sequence[Image], evidence: EarlierReports | None = None) -> list[StageOutput]:
        if len(batch) not in self.sizes:
            self.sizes.add(len(batch))  # counted before it runs, as TorchModelRunner does
            await asyncio.sleep(self.params.first_run_s)
        return [StageOutput(1.0, Evidence()) for _ in batch]


def _image(seed: int) -> Image:
    return Image(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8))


def test_a_first_run_of_a_shape_moves_no_client_to_the_costly_lane(model_dir: Path, caplog):
    """Four clients' batches of four, then two new clients in a batch of two, the first of its size
    (1 s: 0.5 s an image, 0.2 s the costly bound and over 100x the typical image). Charged, both would
    run one image at a time from then on, and admission would expect a tenth of a second per image."""
    tier = "  - name: t\n    stages:\n      - name: s\n        kind: test_first_runs\n        first_run_s: 1.0\n"
    pipeline = write_pipeline(model_dir, "first_runs", first_tier=tier, deadline_s=10.0)

    async def go() -> DetectionService:
        svc = DetectionService.from_pipeline(pipeline, policy=BatchPolicy(max_batch_size=8, max_wait_s=0.0),
                                             client_costs=ClientCosts(costly_image_s=0.2))
        await svc.start()
        try:
            for k in range(6):  # same tick: one batch of four each time; the first is the size's first run
                futures = [f for c in "abcd" for f in svc.submit([_image(k)], client=c)]
                await asyncio.gather(*futures)
            futures = [f for c in "ef" for f in svc.submit([_image(9)], client=c)]
            assert len(await asyncio.gather(*futures)) == 2
        finally:
            await svc.aclose()
        return svc

    with caplog.at_level(logging.WARNING, logger="workzone.service"):
        svc = asyncio.run(go())
    costs = svc.client_costs
    assert not any(costs.is_costly(c, 48 * 64) for c in "abcdef")
    assert costs.cost("e") is None and costs.cost("a") is not None and costs.cost("a") < 0.01
    assert svc.seconds_per_image is not None and svc.seconds_per_image < 0.01
    # The bench's rows count these lines (workzone.throughput.http).
    assert refusal_counts(caplog.text) == {"batch beside a first run of a shape (not charged)": 2}


def test_every_batch_the_server_forms_runs_on_a_compiled_bucket(model_dir: Path):
    """The torch backend with torch.compile: before the service is ready it has run every bucket up to its
    batch size (16), so no batch of 1 to 16 images compiles while serving (before, only the warm-up's
    bucket was compiled, and a batch of 9 waited for a second compile)."""
    pytest.importorskip("torch")
    tier = ("  - name: t\n    stages:\n      - name: clf\n        kind: onnx_classifier\n        model: tiny.onnx\n"
            "        backend: torch\n        compile: true\n        max_batch: 64\n")
    pipeline = write_pipeline(model_dir, "compiled", first_tier=tier, deadline_s=60.0)

    async def go() -> tuple[int, int, list[int]]:
        svc = DetectionService.from_pipeline(pipeline, policy=BatchPolicy(max_batch_size=16))
        await svc.start()
        try:
            ready = svc.cascade.cold_runs
            answered = [len(await svc.run([_image(n)] * n)) for n in range(1, 17)]
            return ready, svc.cascade.cold_runs, answered
        finally:
            await svc.aclose()

    ready, after, answered = asyncio.run(go())
    assert answered == list(range(1, 17))
    assert ready == 5 and after == ready  # buckets 1, 2, 4, 8, 16 on the CPU, all before ready

    # The sync API's batches go past the micro-batcher: it compiles no bucket its callers may never send.
    from workzone.api import load_pipeline

    with load_pipeline(str(pipeline)) as pipe:
        assert pipe.cascade.cold_runs == 1  # the stage's own warm-up input
