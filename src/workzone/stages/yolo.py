"""YOLO and RT-DETR detectors through the ``ultralytics`` package.

``model`` is a weights file (``.pt``, or any export Ultralytics can run: ``.onnx``,
``.engine``, ``.torchscript``...) or a model yaml (``yolo11n.yaml``, ``rtdetr-l.yaml``) that builds
a random-initialised network, which is only useful for tests. Weights are never downloaded unless
``allow_download`` is set: a hub name like ``yolo11n.pt`` that is not on disk is an error.

Ultralytics needs torch and torchvision (its predictor imports torchvision for NMS); install the
``detect`` extra into an environment whose torch has a matching torchvision. Set
``YOLO_OFFLINE=1`` (and ``yolo settings sync=False``) where no network or telemetry is wanted;
prediction itself saves and plots nothing, so no font is fetched.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import Field

from workzone._optional import require
from workzone.errors import ModelFileError, StageError
from workzone.stages._evidence_map import ClassMap, Detection, detections_to_output
from workzone.stages.base import Stage, StageParams
from workzone.stages.registry import register_stage
from workzone.types import Image, StageOutput

__all__ = ["YoloParams", "YoloStage", "results_to_detections"]

_BUILD_SUFFIXES = (".yaml", ".yml")


class YoloParams(StageParams):
    model: str = Field(description="weights file (.pt, .onnx, ...) or a model yaml such as yolo11n.yaml")
    family: Literal["auto", "yolo", "rtdetr"] = Field(
        default="auto", description="auto: RT-DETR when the model name contains 'rtdetr', else YOLO")
    conf: float = Field(default=0.25, ge=0.0, le=1.0, description="minimum box confidence")
    iou: float = Field(default=0.7, ge=0.0, le=1.0, description="NMS IoU threshold")
    imgsz: int = Field(default=640, ge=32, le=4096, description="inference size (multiple of 32)")
    max_det: int = Field(default=100, ge=1, le=1000)
    half: bool = Field(default=False, description="float16 inference (CUDA only; ignored on CPU)")
    batch_size: int = Field(default=8, ge=1, le=256)
    classes: ClassMap = Field(default_factory=ClassMap, description="detector classes -> road-work evidence")
    allow_download: bool = Field(default=False, description="let Ultralytics fetch hub weights that are not on disk")


@register_stage("ultralytics")
class YoloStage(Stage):
    """Runs an Ultralytics YOLO / RT-DETR model and scores its boxes as road-work evidence."""

    Params = YoloParams
    default_cost = 80.0
    params: YoloParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._model = None
        self._device = "cpu"
        # Ultralytics predictors keep per-call state on the model object: one call at a time.
        self._lock = threading.Lock()

    async def load(self) -> None:
        await self.run_blocking(self._load_sync)

    def _load_sync(self) -> None:
        source = self._source()
        ultralytics = require("ultralytics", "detect", "YOLO / RT-DETR detectors")
        family = self.params.family
        if family == "auto":
            family = "rtdetr" if "rtdetr" in Path(source).name.lower() else "yolo"
        cls = ultralytics.RTDETR if family == "rtdetr" else ultralytics.YOLO
        try:
            model = cls(source)
        except (FileNotFoundError, RuntimeError, KeyError, ValueError, OSError) as exc:
            raise ModelFileError(f"stage {self.name!r}: cannot load {self.params.model!r} with "
                                 f"ultralytics.{cls.__name__}: {exc}") from exc
        if getattr(model, "task", "detect") != "detect":
            raise ModelFileError(f"stage {self.name!r}: {self.params.model!r} is a {model.task!r} model; "
                                 "a detection model is needed")
        self._device = self._pick_device()
        self._model = model

    def _source(self) -> str:
        """A local file when there is one; a packaged yaml name; a hub name only if downloads are allowed."""
        model = self.params.model
        local = self.context.resolve(model)
        if local.is_file():
            return str(local)
        if Path(model).suffix in _BUILD_SUFFIXES and "/" not in model:
            return model  # Ultralytics resolves yolo11n.yaml etc. inside its package: nothing is fetched
        if self.params.allow_download and "/" not in model:
            return model
        raise ModelFileError(f"stage {self.name!r}: model file {local} does not exist (set allow_download: true "
                             "to let Ultralytics fetch a published checkpoint by name)")

    def _pick_device(self) -> str:
        torch = require("torch", "detect")
        want = self.context.device
        return want if want.startswith("cuda") and torch.cuda.is_available() else "cpu"

    async def warmup(self) -> None:
        await self.run_blocking(self._predict_sync, [Image(np.zeros((64, 64, 3), np.uint8))])

    async def predict(self, batch: Sequence[Image]) -> list[StageOutput]:
        if self._model is None:
            raise StageError(self.name, "predict() called before load()")
        return await self.run_blocking(self._predict_sync, list(batch))

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        p = self.params
        outputs: list[StageOutput] = []
        for i in range(0, len(batch), p.batch_size):
            # Ultralytics reads numpy arrays as OpenCV BGR.
            frames = [np.ascontiguousarray(img.pixels[:, :, ::-1]) for img in batch[i:i + p.batch_size]]
            with self._lock:
                results = self._model.predict(frames, conf=p.conf, iou=p.iou, imgsz=p.imgsz, max_det=p.max_det,
                                              half=p.half and self._device != "cpu", device=self._device,
                                              verbose=False, save=False)
            outputs.extend(detections_to_output(results_to_detections(r), p.classes) for r in results)
        return outputs

    async def aclose(self) -> None:
        self._model = None


def results_to_detections(result) -> list[Detection]:
    """Boxes of one ``ultralytics.engine.results.Results`` as :class:`Detection` (original-image pixels)."""
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return []
    xyxy = boxes.xyxy.float().cpu().numpy()
    conf = boxes.conf.float().cpu().numpy()
    cls = boxes.cls.int().cpu().numpy()
    names = result.names
    return [Detection(str(names.get(int(c), c)), float(s), *map(float, b)) for b, s, c in zip(xyxy, conf, cls)]
