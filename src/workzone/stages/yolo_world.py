"""YOLO-World open-vocabulary detectors through the ``ultralytics`` package.

YOLO-World detects what its vocabulary names: text embeddings of class names, computed by a CLIP
text encoder, stored in the model. Two ways to give it the vocabulary:

- ``prompts`` (text -> evidence class): at load the stage sets them as the vocabulary
  (``set_classes``), which needs Ultralytics' CLIP text encoder (the ``clip`` package and its
  ViT-B/32 weights: a download unless cached). Weights whose saved vocabulary already is exactly
  these prompts load without it.
- no ``prompts``: the vocabulary saved in the weights is used as is (``YOLOWorld(...).set_classes(
  [...])`` then ``.save("roadwork-world.pt")`` once, where there is a network), and ``classes``
  maps its names to evidence, as for the closed-set detectors.

``model`` is such a ``.pt`` file, or a model yaml (``yolov8s-worldv2.yaml``) that builds a
random-initialised network with the 80 COCO names, which is only useful for tests. Hub weights
(``yolov8s-worldv2.pt``) are fetched only with ``allow_download``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from workzone._optional import require
from workzone.errors import ModelFileError
from workzone.stages._evidence_map import ClassMap, check_prompts
from workzone.stages._model_stage import torch_device
from workzone.stages.ultralytics import UltralyticsParams, YoloStage

__all__ = ["YoloWorldParams", "YoloWorldStage"]


class YoloWorldParams(UltralyticsParams):
    model: str = Field(description="YOLO-World weights (.pt, vocabulary saved in it) or a model yaml such as "
                                   "yolov8s-worldv2.yaml")
    prompts: dict[str, str] = Field(default_factory=dict, description="text -> evidence class; empty: the "
                                    "vocabulary saved in the weights, mapped by classes")
    conf: float = Field(default=0.1, ge=0.0, le=1.0, description="minimum box confidence (open-vocabulary scores "
                        "run lower than closed-set ones)")

    @model_validator(mode="after")
    def _check_prompts(self) -> "YoloWorldParams":
        check_prompts(self.prompts, self.classes)
        return self


class YoloWorldStage(YoloStage):
    """Runs an Ultralytics YOLO-World model on a text vocabulary and scores its boxes as road-work evidence."""

    kind = "yolo_world"
    tiny_params = {"model": "yolov8s-worldv2.yaml", "imgsz": 64, "conf": 0.0}
    Params = YoloWorldParams  # type: ignore[assignment]
    default_cost = 100.0
    params: YoloWorldParams  # type: ignore[assignment]

    def _load_sync(self) -> None:
        source = self._source()
        ultralytics = require("ultralytics", "detect", "YOLO-World detectors")
        try:
            model = ultralytics.YOLOWorld(source)
        except (FileNotFoundError, RuntimeError, KeyError, ValueError, OSError, AttributeError) as exc:
            raise ModelFileError(f"stage {self.name!r}: cannot load {self.params.model!r} with "
                                 f"ultralytics.YOLOWorld: {exc}") from exc
        prompts = list(self.params.prompts)
        if prompts and _names(model) != prompts:
            try:
                model.set_classes(prompts)
            except Exception as exc:  # noqa: BLE001 - CLIP's loader raises import, network and file errors alike
                raise ModelFileError(
                    f"stage {self.name!r}: setting the vocabulary {prompts} needs Ultralytics' CLIP text encoder, "
                    f"which could not be loaded here ({type(exc).__name__}: {exc}); set it once where there is a "
                    "network (YOLOWorld(m).set_classes([...]); .save('vocab.pt')) and point model at that file"
                ) from exc
        self._device = torch_device(self, "detect", cuda_only=True)
        self._model = model

    @property
    def _class_map(self) -> ClassMap:
        # Box labels are the prompt texts; the prompts say which evidence class each one is.
        classes = self.params.classes
        if not self.params.prompts:
            return classes
        return classes.model_copy(update={"labels": {**classes.labels, **self.params.prompts}})


def _names(model) -> list[str]:  # noqa: ANN001 - an ultralytics model
    names = getattr(model, "names", None) or {}
    return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
