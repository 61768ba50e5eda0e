"""Helpers shared by the stage tests: run a stage through its lifecycle, probe optional backends."""

from __future__ import annotations

import asyncio
import importlib
from typing import Sequence

from workzone.stages.base import Stage
from workzone.types import Image, StageOutput


def run_stage(stage: Stage, images: Sequence[Image], *, warmup: bool = True) -> list[StageOutput]:
    """``load`` -> ``warmup`` (unless told not to) -> ``predict(images)`` -> ``aclose``, in one event loop.

    ``aclose`` runs even when ``predict`` raises, as the cascade does.
    """
    async def go() -> list[StageOutput]:
        await stage.load()
        if warmup:
            await stage.warmup()
        try:
            return await stage.predict(images)
        finally:
            await stage.aclose()

    return asyncio.run(go())


def why_cannot_run(name: str, *modules: str) -> str | None:
    """``None`` when every module imports, else a skip reason ``"<name> cannot run here: <error>"``.

    Any import failure counts (a CUDA-only torchvision raises more than ImportError).
    """
    try:
        for module in modules:
            importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "cannot run here"
        return f"{name} cannot run here: {type(exc).__name__}: {exc}"
    return None


def ultralytics_offline() -> str | None:
    """Keep Ultralytics off the network and out of ``$HOME`` (it reads these at import), then
    :func:`why_cannot_run` for it and the torchvision its predictor imports."""
    import os
    import tempfile

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="wz-ultralytics-"))
    return why_cannot_run("ultralytics", "torchvision", "ultralytics")
