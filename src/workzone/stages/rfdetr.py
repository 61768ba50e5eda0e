"""RF-DETR detectors through the ``rfdetr`` package (Roboflow).

``model`` is a checkpoint file (``.pth`` from ``rfdetr`` training, or a published checkpoint
downloaded beforehand); ``variant`` names the architecture it was trained with. ``model: null``
builds the variant with random weights, which is only useful for tests: RF-DETR would otherwise
download its COCO checkpoint, and this stage never downloads unless ``allow_download`` is set.

``rfdetr`` depends on torch, torchvision, transformers and supervision; install the ``rfdetr``
extra into an environment whose torch has a matching torchvision.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from pydantic import Field

from workzone._optional import require
from workzone.errors import ModelFileError
from workzone.stages._evidence_map import ClassMap, Detection, detections_to_output
from workzone.stages._model_stage import ModelStage, local_weights, torch_device
from workzone.stages.base import StageParams
from workzone.types import Image, StageOutput

__all__ = ["RFDETRParams", "RFDETRStage", "to_detections"]

_VARIANTS = {"nano": "RFDETRNano", "small": "RFDETRSmall", "medium": "RFDETRMedium", "base": "RFDETRBase",
             "large": "RFDETRLarge"}


class RFDETRParams(StageParams):
    model: str | None = Field(description="checkpoint (.pth); null = random weights (tests only)")
    variant: Literal["nano", "small", "medium", "base", "large"] = Field(default="base")
    threshold: float = Field(default=0.4, ge=0.0, le=1.0, description="minimum box confidence")
    class_names: list[str] | None = Field(default=None, description="override the checkpoint's class names")
    classes: ClassMap = Field(default_factory=ClassMap, description="detector classes -> road-work evidence")
    optimize: bool = Field(default=False, description="call optimize_for_inference() after loading (GPU)")
    allow_download: bool = Field(default=False, description="let rfdetr fetch a named published checkpoint")


class RFDETRStage(ModelStage):
    """Runs an RF-DETR model and scores its boxes as road-work evidence."""

    kind = "rfdetr"
    extra = "rfdetr"
    requires = ("rfdetr", "torch", "torchvision")
    runs_on = "gpu"
    tiny_params = {"model": None, "variant": "nano", "threshold": 0.0}
    Params = RFDETRParams
    default_cost = 300.0
    params: RFDETRParams

    @classmethod
    def planned_model(cls, params: RFDETRParams) -> str:
        return f"rfdetr-{params.variant}"

    @classmethod
    def bytes_per_param(cls, params: RFDETRParams) -> float:
        return 4.0  # RF-DETR runs in float32

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._names: list[str] = []

    def _load_sync(self) -> None:
        weights = self._weights()
        rfdetr = require("rfdetr", "rfdetr", "RF-DETR detectors")
        device = torch_device(self, "rfdetr", cuda_only=True)
        cls = getattr(rfdetr, _VARIANTS[self.params.variant])
        try:
            model = cls(pretrain_weights=weights, device=device)
        except (FileNotFoundError, RuntimeError, KeyError, ValueError, OSError) as exc:
            raise ModelFileError(f"stage {self.name!r}: cannot load {self.params.model!r} as RF-DETR "
                                 f"{self.params.variant}: {exc}") from exc
        if self.params.optimize:
            model.optimize_for_inference()
        names = self.params.class_names or getattr(model, "class_names", None) or []
        self._names = list(names.values()) if isinstance(names, dict) else list(names)
        self._model, self._device = model, device

    def _weights(self) -> str | None:
        model = self.params.model
        if model is None:
            return None
        return local_weights(self, model, allow_download=self.params.allow_download, fetcher="rfdetr",
                             what="checkpoint")

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        from PIL import Image as PILImage

        if not batch:  # rfdetr cannot stack an empty batch
            return []
        with self._lock:
            res = self._model.predict([PILImage.fromarray(img.pixels) for img in batch],
                                      threshold=self.params.threshold)
        res = res if isinstance(res, list) else [res]
        out = []
        for det in res:
            data = getattr(det, "data", None) or {}
            # rfdetr names each box itself (its COCO ids have gaps); a class_names override wins.
            attached = None if self.params.class_names else data.get("class_name")
            dets = to_detections(det.xyxy, det.confidence, det.class_id, self._names, attached)
            out.append(detections_to_output(dets, self.params.classes))
        return out


def to_detections(xyxy: np.ndarray, confidence: np.ndarray | None, class_id: np.ndarray | None,
                  names: Sequence[str], class_name: Sequence[str] | None = None) -> list[Detection]:
    """Turn the arrays of a ``supervision.Detections`` into :class:`Detection` rows.

    Args:
        xyxy: (N, 4) boxes in image pixels.
        confidence: (N,) scores, or None (then every box counts with score 1).
        class_id: (N,) class ids, or None.
        names: class names indexed by id, used when ``class_name`` is None.
        class_name: (N,) names rfdetr attached to each box; an empty one means rfdetr knew no
            name for that id.

    Returns:
        One Detection per box; a box without a name becomes ``class_<id>``.

    Examples:
        >>> to_detections(np.array([[0, 0, 4, 4]]), np.array([0.5]), np.array([1]), ["a", "b"])
        [Detection(label='b', score=0.5, x1=0.0, y1=0.0, x2=4.0, y2=4.0)]
    """
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    scores = np.ones(n) if confidence is None else np.asarray(confidence, dtype=np.float64).reshape(-1)
    ids = np.full(n, -1) if class_id is None else np.asarray(class_id).reshape(-1).astype(int)
    out = []
    for i in range(n):
        c = int(ids[i])
        if class_name is not None:
            label = str(class_name[i]) if i < len(class_name) and class_name[i] else f"class_{c}"
        else:
            label = names[c] if 0 <= c < len(names) else f"class_{c}"
        out.append(Detection(label, float(np.clip(scores[i], 0.0, 1.0)), *map(float, boxes[i])))
    return out
