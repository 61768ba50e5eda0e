"""Simple real stages for cascade tests (registered in a private registry-free way by kind)."""

from __future__ import annotations

import asyncio
from typing import Sequence

from pydantic import Field

from workzone.stages.base import Stage, StageParams
from workzone.stages.registry import register_stage
from workzone.types import EarlierReports, Evidence, Image, StageOutput


class RednessParams(StageParams):
    gain: float = 10.0


@register_stage("test_redness", replace=True)
class RednessStage(Stage):
    """Log-odds from how much redder than blue the image is."""

    Params = RednessParams

    async def predict(self, batch: Sequence[Image], evidence: EarlierReports | None = None) -> list[StageOutput]:
        self.calls = getattr(self, "calls", 0) + len(batch)
        out = []
        for im in batch:
            r, b = im.pixels[..., 0].mean() / 255, im.pixels[..., 2].mean() / 255
            out.append(StageOutput(self.params.gain * (r - b), Evidence(notes=(f"r-b={r - b:.2f}",))))
        return out


class FailParams(StageParams):
    message: str = "boom"


@register_stage("test_failing", replace=True)
class FailingStage(Stage):
    Params = FailParams

    async def predict(self, batch: Sequence[Image], evidence: EarlierReports | None = None) -> list[StageOutput]:
        raise RuntimeError(self.params.message)


class SleepParams(StageParams):
    seconds: float = Field(default=5.0, ge=0)


@register_stage("test_sleepy", replace=True)
class SleepyStage(Stage):
    Params = SleepParams

    async def predict(self, batch: Sequence[Image], evidence: EarlierReports | None = None) -> list[StageOutput]:
        await asyncio.sleep(self.params.seconds)
        return [StageOutput(5.0) for _ in batch]


@register_stage("test_evidence_counter", replace=True)
class EvidenceCounterStage(Stage):
    """Scores by how many earlier stages said road work: exercises the ``evidence`` argument."""

    async def predict(self, batch: Sequence[Image], evidence: EarlierReports | None = None) -> list[StageOutput]:
        return [StageOutput(float(sum(1 for r in reps if (r.log_odds or 0) > 0)),
                            Evidence(notes=(",".join(r.stage for r in reps),))) for reps in evidence or [()] * len(batch)]
