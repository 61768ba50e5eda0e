"""Open-vocabulary detection (OWLv2, OWL-ViT, Grounding DINO) via transformers.

Text prompts ("a traffic cone", "a road work sign") are mapped to evidence classes in the
pipeline; boxes above ``threshold`` are scored by :mod:`workzone.stages._evidence_map`.

OWL models take one list of queries per image and return the index of the matching query.
Grounding DINO takes one lower-case string of ``.``-terminated phrases and returns the phrase it
grounded, which is matched back to the prompt that contains it.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
from pydantic import Field, model_validator

from workzone.stages._evidence_map import ClassMap, Detection, check_prompts, outputs_in_chunks
from workzone.stages._hf_common import HFParams, HFStage, load_hf, to_pil
from workzone.types import Image, StageOutput

__all__ = ["OpenVocabParams", "OpenVocabStage", "match_phrase"]

_OWL_TYPES = ("owlv2", "owlvit")


class OpenVocabParams(HFParams):
    model: str = Field(default="google/owlv2-base-patch16-ensemble",
                       description="OWLv2 / OWL-ViT / Grounding DINO hub id or local directory")
    prompts: dict[str, str] = Field(
        default_factory=lambda: {"a traffic cone": "cone", "a road barrier": "barrier",
                                 "a construction barrel": "drum", "a road work sign": "sign",
                                 "a construction worker in a safety vest": "worker", "an excavator": "machine"},
        min_length=1, description="text query -> evidence class")
    threshold: float = Field(default=0.2, ge=0.0, le=1.0, description="minimum box score")
    text_threshold: float = Field(default=0.25, ge=0.0, le=1.0, description="Grounding DINO phrase threshold")
    classes: ClassMap = Field(default_factory=ClassMap, description="evidence weights and prior")
    batch_size: int = Field(default=4, ge=1, le=64)

    @model_validator(mode="after")
    def _check_prompts(self) -> "OpenVocabParams":
        check_prompts(self.prompts, self.classes)
        return self


class OpenVocabStage(HFStage):
    """Detects road-work objects described in text, with no detector training."""

    kind = "hf_zero_shot_detection"
    tiny_params = {"model": "tiny:owlv2", "prompts": {"a traffic cone": "cone"}, "threshold": 0.3}
    Params = OpenVocabParams
    default_cost = 900.0
    params: OpenVocabParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._owl = True
        self._queries = list(self.params.prompts)

    def _load_sync(self) -> None:
        model, processor, device = load_hf(self, self.params, "AutoModelForZeroShotObjectDetection", "AutoProcessor")
        self._owl = model.config.model_type in _OWL_TYPES
        self._model, self._processor, self._device = model, processor, device

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        return outputs_in_chunks(batch, self.params.batch_size, self._detect, self.params.classes)

    def _detect(self, part: Sequence[Image]) -> list[list[Detection]]:
        import torch

        sizes = [(img.height, img.width) for img in part]
        if self._owl:
            # OWL text towers have 16 positions; the processor pads each query list to that length.
            text = [self._queries] * len(part)
            inputs = self._processor(text=text, images=to_pil(part), return_tensors="pt",
                                     padding="max_length", truncation=True)
        else:
            text = [" ".join(q.strip().lower().rstrip(".") + "." for q in self._queries)] * len(part)
            inputs = self._processor(text=text, images=to_pil(part), return_tensors="pt", padding=True)
        inputs = inputs.to(self._device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        with self._lock, torch.inference_mode():
            raw = self._model(**inputs)
        post = self._processor.post_process_grounded_object_detection
        accepted = inspect.signature(post).parameters
        kwargs = {"threshold": self.params.threshold, "target_sizes": sizes}
        if "text_threshold" in accepted:
            kwargs["text_threshold"] = self.params.text_threshold
        if "input_ids" in accepted:
            kwargs["input_ids"] = inputs["input_ids"]
        if "text_labels" in accepted and self._owl:
            kwargs["text_labels"] = [self._queries] * len(part)
        results = post(raw, **kwargs)
        return [self._to_detections(res, h, w) for res, (h, w) in zip(results, sizes)]

    def _to_detections(self, res: dict, h: int, w: int) -> list[Detection]:
        dets: list[Detection] = []
        boxes = res["boxes"].float().cpu().numpy().reshape(-1, 4)
        scores = res["scores"].float().cpu().numpy().reshape(-1)
        if self._owl:
            prompts = [self._queries[int(i)] for i in res["labels"].cpu().tolist()]
        else:
            phrases = res.get("text_labels") or res.get("labels") or []
            prompts = [match_phrase(str(ph), self._queries) for ph in phrases]
        for (x1, y1, x2, y2), score, prompt in zip(boxes, scores, prompts):
            if prompt is None:
                continue
            # OWLv2 predicts on a square padded canvas, so boxes can reach into the padding.
            x1, x2 = float(np.clip(x1, 0, w)), float(np.clip(x2, 0, w))
            y1, y2 = float(np.clip(y1, 0, h)), float(np.clip(y2, 0, h))
            dets.append(Detection(self.params.prompts[prompt], float(np.clip(score, 0, 1)), x1, y1, x2, y2))
        return dets


def match_phrase(phrase: str, prompts: Sequence[str]) -> str | None:
    """The prompt a grounded phrase came from: most shared words, ties to the first prompt.

    Grounding DINO returns the sub-phrase it grounded ("traffic cone"), sometimes several joined
    ("cone worker") when prompts overlap; a phrase sharing no word with any prompt is dropped.

    Examples:
        >>> match_phrase("traffic cone", ["a road barrier", "a traffic cone"])
        'a traffic cone'
        >>> match_phrase("", ["a traffic cone"]) is None
        True
    """
    words = set(phrase.lower().replace(".", " ").split())
    best, best_n = None, 0
    for p in prompts:
        n = len(words & set(p.lower().replace(".", " ").split()) - {"a", "an", "the"})
        if n > best_n:
            best, best_n = p, n
    return best
