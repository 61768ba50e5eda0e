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

import re
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from workzone._optional import require
from workzone.errors import ModelFileError
from workzone.stages._evidence_map import ClassMap, Detection, detections_to_output
from workzone.stages._model_stage import ModelStage, local_weights, torch_device
from workzone.stages.base import StageParams
from workzone.types import Image, StageOutput

__all__ = ["UltralyticsParams", "YoloParams", "YoloStage", "results_to_detections"]

_BUILD_SUFFIXES = (".yaml", ".yml")


class UltralyticsParams(StageParams):
    """Params every Ultralytics detector kind has (``ultralytics``, ``yolo_world``)."""

    model: str = Field(description="weights file (.pt, .onnx, ...) or a model yaml such as yolo11n.yaml")
    conf: float = Field(default=0.25, ge=0.0, le=1.0, description="minimum box confidence")
    iou: float = Field(default=0.7, ge=0.0, le=1.0, description="NMS IoU threshold")
    imgsz: int = Field(default=640, ge=32, le=4096, description="inference size (multiple of 32)")
    max_det: int = Field(default=100, ge=1, le=1000)
    half: bool = Field(default=False, description="float16 inference (CUDA only; ignored on CPU)")
    batch_size: int = Field(default=8, ge=1, le=256)
    classes: ClassMap = Field(default_factory=ClassMap, description="detector classes -> road-work evidence")
    allow_download: bool = Field(default=False, description="let Ultralytics fetch hub weights that are not on disk")


class YoloParams(UltralyticsParams):
    family: Literal["auto", "yolo", "rtdetr"] = Field(
        default="auto", description="auto: RT-DETR when the model name contains 'rtdetr', else YOLO")


class YoloStage(ModelStage):
    """Runs an Ultralytics YOLO / RT-DETR model and scores its boxes as road-work evidence.

    Ultralytics predictors keep per-call state on the model object, so calls go one at a time
    (``self._lock``).
    """

    kind = "ultralytics"
    extra = "detect"
    requires = ("ultralytics", "torch", "torchvision")
    runs_on = "gpu"
    tiny_params = {"model": "yolo11n.yaml", "imgsz": 64, "conf": 0.0}
    Params = YoloParams
    default_cost = 80.0
    params: YoloParams

    downloads_from = "github.com"  # Ultralytics' release assets

    @classmethod
    def packaged_model(cls, model: str) -> bool:
        """A model config that ships inside the ultralytics package (``yolo11n.yaml``, ``rtdetr-l.yaml``)."""
        spec = find_spec("ultralytics") if "/" not in model and model.endswith(".yaml") else None
        if spec is None or not spec.submodule_search_locations:
            return False
        stem = model.removesuffix(".yaml")
        # Ultralytics reads a scale letter out of the name: yolo11n.yaml is cfg/models/11/yolo11.yaml at scale n.
        names = {f"{stem}.yaml", re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", stem) + ".yaml"}
        cfg = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "models"
        return any(p.name in names for p in cfg.rglob("*.yaml"))

    @classmethod
    def bytes_per_param(cls, params: UltralyticsParams) -> float:
        return 2.0 if params.half else 4.0

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
        self._device = torch_device(self, "detect", cuda_only=True)
        self._model = model

    def _source(self) -> str:
        """A local file when there is one; a packaged yaml name; a hub name only if downloads are allowed."""
        model = self.params.model
        if Path(model).suffix in _BUILD_SUFFIXES and "/" not in model and not self.context.resolve(model).is_file():
            return model  # Ultralytics resolves yolo11n.yaml etc. inside its package: nothing is fetched
        return local_weights(self, model, allow_download=self.params.allow_download, fetcher="Ultralytics")

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        p: UltralyticsParams = self.params
        outputs: list[StageOutput] = []
        for i in range(0, len(batch), p.batch_size):
            # Ultralytics reads numpy arrays as OpenCV BGR.
            frames = [np.ascontiguousarray(img.pixels[:, :, ::-1]) for img in batch[i:i + p.batch_size]]
            with self._lock:
                results = self._model.predict(frames, conf=p.conf, iou=p.iou, imgsz=p.imgsz, max_det=p.max_det,
                                              half=p.half and self._device != "cpu", device=self._device,
                                              verbose=False, save=False)
            outputs.extend(detections_to_output(results_to_detections(r), self._class_map) for r in results)
        return outputs

    @property
    def _class_map(self) -> ClassMap:
        """How box labels count as evidence (``yolo_world`` adds its prompts)."""
        return self.params.classes


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
