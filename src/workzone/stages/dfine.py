"""D-FINE real-time detectors (a DETR with fine-grained distribution refinement) through transformers.

``model`` is a hub id (``ustc-community/dfine-medium-coco``; ``-obj2coco`` checkpoints were
pre-trained on Objects365) or a local directory saved with ``save_pretrained``. The checkpoint's
own labels (COCO: ``person``, ``truck``, ``traffic light``...) are mapped to road-work evidence by
``classes``, as for the other closed-set detectors; a checkpoint fine-tuned on road-work classes
(``cone``, ``drum``, ``barrier``...) maps through the built-in aliases.

Loading goes through :func:`workzone.stages._hf_common.load_hf` (offline unless the hub id is
cached; ``workzone check`` says which); a checkpoint of another architecture is refused by name.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import Field

from workzone._optional import require
from workzone.errors import ModelFileError
from workzone.stages._evidence_map import ClassMap, Detection, outputs_in_chunks
from workzone.stages._hf_common import HFParams, HFStage, load_hf, model_source, to_pil
from workzone.types import Image, StageOutput

__all__ = ["DFineParams", "DFineStage"]


class DFineParams(HFParams):
    model: str = Field(default="ustc-community/dfine-medium-coco",
                       description="D-FINE hub id or local directory (save_pretrained)")
    threshold: float = Field(default=0.4, ge=0.0, le=1.0, description="minimum box score")
    classes: ClassMap = Field(default_factory=ClassMap, description="detector labels -> road-work evidence")
    batch_size: int = Field(default=8, ge=1, le=256)


class DFineStage(HFStage):
    """Runs a D-FINE detector and scores its boxes as road-work evidence."""

    kind = "dfine"
    tiny_params = {"model": "tiny:dfine", "threshold": 0.0}
    Params = DFineParams
    default_cost = 120.0
    params: DFineParams

    def _load_sync(self) -> None:
        self._refuse_other_architectures()
        model, processor, device = load_hf(self, self.params, "AutoModelForObjectDetection", "AutoImageProcessor")
        self._model, self._processor, self._device = model, processor, device

    def _refuse_other_architectures(self) -> None:
        """Read the checkpoint's config (small) before its weights: another detector is refused by name."""
        transformers = require("transformers", "hf", "transformers stages")
        try:
            config = transformers.AutoConfig.from_pretrained(model_source(self, self.params.model),
                                                             revision=self.params.revision)
        except (OSError, ValueError, KeyError):
            return  # load_hf says what is wrong with the checkpoint itself
        if config.model_type != "d_fine":
            raise ModelFileError(f"stage {self.name!r}: {self.params.model!r} is a {config.model_type!r} "
                                 "checkpoint, not D-FINE; use kind hf_zero_shot_detection, ultralytics or rfdetr "
                                 "for other detectors")

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        return outputs_in_chunks(batch, self.params.batch_size, self._detect, self.params.classes)

    def _detect(self, part: Sequence[Image]) -> list[list[Detection]]:
        import torch

        sizes = [(img.height, img.width) for img in part]
        inputs = self._processor(images=to_pil(part), return_tensors="pt").to(self._device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        with self._lock, torch.inference_mode():
            raw = self._model(**inputs)
        results = self._processor.post_process_object_detection(raw, threshold=self.params.threshold,
                                                                 target_sizes=sizes)
        names = self._model.config.id2label
        return [_to_detections(res, names, h, w) for res, (h, w) in zip(results, sizes)]


def _to_detections(res: dict, names: dict[int, str], h: int, w: int) -> list[Detection]:
    """One image's post-processed boxes (original-image pixels, clipped to it) as :class:`Detection`."""
    boxes = res["boxes"].float().cpu().numpy().reshape(-1, 4)
    scores = res["scores"].float().cpu().numpy().reshape(-1)
    labels = res["labels"].cpu().numpy().reshape(-1)
    out = []
    for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
        out.append(Detection(str(names.get(int(label), int(label))), float(np.clip(score, 0, 1)),
                             float(np.clip(x1, 0, w)), float(np.clip(y1, 0, h)),
                             float(np.clip(x2, 0, w)), float(np.clip(y2, 0, h))))
    return out
