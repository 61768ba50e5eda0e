"""workzone.miner.service without bittensor: the answer is always a finite number in time,
callers are filtered by the metagraph, priority follows stake."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from pathlib import Path

import pytest

from miner_support import LocalMetagraph
from server_support import jpeg_bytes
from workzone.miner.service import NO_ANSWER, MinerService, explain
from workzone.miner.settings import MinerSettings
from workzone.types import Box, Decision, Evidence, StageReport


def settings(pipeline: Path, **kw) -> MinerSettings:
    return MinerSettings(pipeline=str(pipeline), **kw)


async def with_service(pipeline: Path, fn, metagraph: LocalMetagraph | None = None, start: bool = True, **kw):
    s = settings(pipeline, **kw)
    detection = MinerService.build_detection(s)
    if start:
        await detection.start()
    svc = MinerService(detection, s, lambda: metagraph)
    try:
        return await fn(svc)
    finally:
        await detection.aclose(timeout=5)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_answer_is_the_cascade_probability(pipelines: dict[str, Path]) -> None:
    import workzone

    image = jpeg_bytes(224, 224, seed=3)
    ans = asyncio.run(with_service(pipelines["fast"], lambda svc: svc.answer(b64(image), 9.0)))
    with workzone.load_pipeline(pipelines["fast"]) as pipe:
        expected = pipe.predict(image).probability
    assert ans.source == "cascade" and ans.error is None
    assert ans.prediction == pytest.approx(expected)
    assert (ans.prediction > 0.5) == ans.decision.label


def _progressive_bomb() -> bytes:
    from tests.reliability.corpus import progressive_scan_bomb  # 1,000 scans: refused from the markers

    return progressive_scan_bomb(scans=1000)


@pytest.mark.parametrize("payload", ["", "%%% not base64 %%%", b64(b"definitely not an image"),
                                     b64(jpeg_bytes()[:200]), b64(_progressive_bomb())])
def test_undecodable_input_keeps_the_no_answer_value(pipelines: dict[str, Path], payload: str) -> None:
    ans = asyncio.run(with_service(pipelines["fast"], lambda svc: svc.answer(payload, 9.0)))
    assert ans.prediction == NO_ANSWER and ans.source == "invalid" and ans.error


def test_tier2_sleeping_past_the_deadline_still_answers_in_time(pipelines: dict[str, Path]) -> None:
    image = b64(jpeg_bytes(224, 224))
    t = time.perf_counter()
    ans = asyncio.run(with_service(pipelines["sleepy"], lambda svc: svc.answer(image, 9.0), deadline_s=1.0))
    elapsed = time.perf_counter() - t
    assert ans.source == "cascade"
    assert math.isfinite(ans.prediction) and 0.0 <= ans.prediction <= 1.0
    assert ans.latency_ms < 1500 and elapsed < 5
    vlm = [r for r in ans.decision.stages if r.stage == "vlm"]
    assert vlm and vlm[0].log_odds is None and "no answer within" in vlm[0].error


def test_tier2_raising_still_answers_from_tier1(pipelines: dict[str, Path], caplog) -> None:
    image = b64(jpeg_bytes(224, 224, seed=5))
    with caplog.at_level("WARNING", logger="workzone.miner"):
        ans = asyncio.run(with_service(pipelines["failing"], lambda svc: svc.answer(image, 9.0)))
    assert ans.source == "cascade" and math.isfinite(ans.prediction)
    assert "told to fail" in ans.decision.errors["vlm"]
    # A degraded answer says so, and the miner logs why.
    assert ans.decision.degraded and "vlm (RuntimeError)" in ans.decision.degraded_reason
    assert any("answered degraded" in r.getMessage() and "vlm (RuntimeError)" in r.getMessage()
               for r in caplog.records)
    # tier 2 fused nothing new, so its probability is tier 1's
    assert ans.prediction == pytest.approx(ans.decision.tier_probabilities[0])


def test_caller_timeout_shrinks_the_budget(pipelines: dict[str, Path]) -> None:
    image = b64(jpeg_bytes())
    t = time.perf_counter()
    ans = asyncio.run(with_service(pipelines["sleepy"], lambda svc: svc.answer(image, 1.6), deadline_s=6.0,
                                   response_margin_s=1.0))
    assert time.perf_counter() - t < 3.0
    assert 0.0 <= ans.prediction <= 1.0


def test_service_not_ready_answers_the_prior_not_nothing(pipelines: dict[str, Path]) -> None:
    ans = asyncio.run(with_service(pipelines["fast"], lambda svc: svc.answer(b64(jpeg_bytes()), 9.0), start=False))
    assert ans.source == "fallback" and ans.prediction == pytest.approx(0.5) and "NotReady" in ans.error


def test_budget() -> None:
    s = MinerSettings(deadline_s=6.0, response_margin_s=1.0)
    svc = MinerService.__new__(MinerService)
    svc.settings = s
    assert svc.budget_s(None) == 6.0
    assert svc.budget_s(12.0) == 6.0
    assert svc.budget_s(4.0) == 3.0
    assert svc.budget_s(0.5) == 0.05  # never zero: the first tier still gets a chance
    with pytest.raises(ValueError, match="9 s timeout"):
        MinerSettings(deadline_s=8.5, response_margin_s=1.0)


# -- callers -----------------------------------------------------------------------------------------
MG = LocalMetagraph(hotkeys=["miner", "validator", "small-validator", "plain"],
                    validator_permit=[False, True, True, False], S=[0.0, 5000.0, 20.0, 7.0])


@pytest.mark.parametrize("hotkey, force_permit, allow_unregistered, refused, reason", [
    ("validator", True, False, False, "recognized"),
    ("plain", True, False, True, "no validator permit"),
    ("plain", False, False, False, "recognized"),
    ("stranger", True, False, True, "not registered"),
    ("stranger", False, True, False, "allowed by settings"),
    ("stranger", True, True, True, "no validator permit"),  # never more than a registered non-validator
    (None, True, False, True, "missing"),
])
def test_blacklist(pipelines, hotkey, force_permit, allow_unregistered, refused, reason) -> None:
    async def check(svc: MinerService) -> tuple[bool, str]:
        return svc.blacklist(hotkey)

    got = asyncio.run(with_service(pipelines["fast"], check, MG, start=False, force_validator_permit=force_permit,
                                   allow_non_registered=allow_unregistered))
    assert got[0] is refused and reason in got[1]


def test_priority_is_stake(pipelines) -> None:
    async def check(svc: MinerService) -> list[float]:
        return [svc.priority(h) for h in ("validator", "small-validator", "stranger", None)]

    assert asyncio.run(with_service(pipelines["fast"], check, MG, start=False)) == [5000.0, 20.0, 0.0, 0.0]


def test_explanation_names_the_evidence() -> None:
    box = Box("traffic_cone", 0.91, 1, 2, 30, 40)
    rep = StageReport("det", "roadwork_detector", 0, 2.0, Evidence(boxes=(box,), notes=("3 cones",)), 5.0)
    yes = Decision(0.88, 0, "fast", (rep,), (0.88,), 5.0, 30.0)
    no = Decision(0.2, 0, "fast", (rep,), (0.2,), 5.0, 30.0)
    assert explain(yes) == "traffic_cone (0.91); 3 cones"
    assert explain(no) == ""
