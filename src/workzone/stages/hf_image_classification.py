"""Any transformers image classifier as a road-work scorer (e.g. ``natix-network-org/roadwork``).

The model's softmax probabilities of ``positive_labels`` are summed into P(road work), returned as
log-odds. Labels are matched against the model's ``id2label`` case-insensitively, ignoring spaces,
hyphens and underscores; a label the model does not have is a configuration error at load time.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from workzone.errors import ConfigError
from workzone.stages._evidence_map import normalise_label
from workzone.stages._hf_common import HFParams, HFStage, chunks, load_hf, to_pil
from workzone.types import Evidence, Image, StageOutput, logit

__all__ = ["HFClassifierParams", "HFClassifierStage"]


class HFClassifierParams(HFParams):
    positive_labels: list[str] = Field(min_length=1, description="model labels that mean road work")
    top_k: int = Field(default=3, ge=0, le=20, description="how many top labels to report as notes")


class HFClassifierStage(HFStage):
    """Scores whole images with a transformers ``AutoModelForImageClassification``."""

    kind = "hf_image_classification"
    tiny_params = {"model": "tiny:vit", "positive_labels": ["roadwork"]}
    Params = HFClassifierParams
    default_cost = 120.0
    params: HFClassifierParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._positive: list[int] = []
        self._labels: dict[int, str] = {}

    def _load_sync(self) -> None:
        model, processor, device = load_hf(self, self.params, "AutoModelForImageClassification", "AutoImageProcessor")
        labels = {int(k): str(v) for k, v in model.config.id2label.items()}
        by_name = {normalise_label(v): k for k, v in labels.items()}
        missing = [lab for lab in self.params.positive_labels if normalise_label(lab) not in by_name]
        if missing:
            raise ConfigError(f"stage {self.name!r} (kind {self.kind}): positive_labels {missing} are not labels of "
                              f"{self.params.model!r}; it has: {', '.join(labels.values())}")
        self._positive = sorted({by_name[normalise_label(lab)] for lab in self.params.positive_labels})
        if len(self._positive) == len(labels):
            raise ConfigError(f"stage {self.name!r} (kind {self.kind}): every label of the model is positive, "
                              "so the score would always be 1")
        self._labels = labels
        self._model, self._processor, self._device = model, processor, device

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        import torch

        outputs: list[StageOutput] = []
        for part in chunks(batch, self.params.batch_size):
            inputs = self._processor(images=to_pil(part), return_tensors="pt").to(self._device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
            with self._lock, torch.inference_mode():
                logits = self._model(**inputs).logits.float()
            # log P(positive) - log P(negative) from log-softmax is exact and stays finite where
            # summing probabilities would round to 1.
            logp = torch.log_softmax(logits, dim=-1)
            neg = [i for i in range(logp.shape[-1]) if i not in self._positive]
            z = torch.logsumexp(logp[:, self._positive], -1) - torch.logsumexp(logp[:, neg], -1)
            probs = logp.exp().cpu().numpy()
            for row, zi in zip(probs, z.cpu().tolist()):
                outputs.append(StageOutput(log_odds=_finite(zi), evidence=Evidence(notes=self._top(row))))
        return outputs

    def _top(self, probs: np.ndarray) -> tuple[str, ...]:
        if not self.params.top_k:
            return ()
        order = np.argsort(-probs)[:self.params.top_k]
        return ("top: " + ", ".join(f"{self._labels.get(int(i), i)} {probs[i]:.2f}" for i in order),)



def _finite(z: float) -> float:
    # A float16 model can saturate; clamp to the same range logit() gives for p in [1e-6, 1 - 1e-6].
    bound = -logit(1e-6)
    return float(min(max(z, -bound), bound)) if z == z else 0.0
