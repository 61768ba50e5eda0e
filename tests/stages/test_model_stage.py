"""ModelStage's one lifecycle on the two flagship ONNX stages (the object detector and the verifier): warm-up
runs the model on both sessions of its pool (the verifier too, which reads earlier evidence and would abstain
without any), predict checks the evidence's length, and closing stops the pool's worker threads."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from workzone.errors import StageError
from workzone.stages._model_stage import ModelStage
from workzone.stages._onnx import SessionPool
from workzone.stages.base import StageContext
from workzone.stages.object_verifier import ObjectVerifierParams, ObjectVerifierStage
from workzone.stages.roadwork_detector import RoadworkDetectorParams, RoadworkDetectorStage
from workzone.types import Image

pytest.importorskip("onnxruntime")


def _detector() -> RoadworkDetectorStage:
    return RoadworkDetectorStage("objects", RoadworkDetectorParams(threads=2), context=StageContext())


def _verifier() -> ObjectVerifierStage:
    return ObjectVerifierStage("verify", ObjectVerifierParams(threads=2), context=StageContext())


def _pool(stage: ModelStage) -> SessionPool:
    model = stage._model
    return model if isinstance(model, SessionPool) else model.sessions


@pytest.mark.parametrize("make", [_detector, _verifier], ids=["roadwork_detector", "object_verifier"])
def test_warmup_runs_the_model_on_both_sessions_and_aclose_stops_the_workers(make):
    stage = make()
    runs: list[int] = []

    async def go() -> tuple[SessionPool, Any]:
        await stage.load()
        pool = _pool(stage)
        real_map = pool.map

        def counted(prepare, run, items):  # the real runs, their sizes noted
            items = list(items)
            runs.append(len(items))
            return real_map(prepare, run, items)

        pool.map = counted  # type: ignore[method-assign]
        await stage.warmup()
        with pytest.raises(StageError, match="evidence for 2 images and 1 images"):
            await stage.predict([Image(np.zeros((8, 8, 3), np.uint8))], evidence=[(), ()])
        await stage.aclose()
        return pool, stage._model

    pool, after = asyncio.run(go())
    # One batch of one image (the wide session), one of two (the workers' narrow one): each ran the model.
    assert runs == [1, 2], "warm-up left a session cold"
    assert after is None
    with pytest.raises(RuntimeError, match="shutdown"):  # its worker threads are stopped
        pool.map(lambda x: x, lambda s, x: x, [1, 2])
    asyncio.run(stage.aclose())  # twice is safe
