"""Zero-shot whole-image scoring with CLIP / SigLIP text prompts.

The model's image-text logits (already scaled by its learned temperature) are compared across
prompts: with positive prompts P and negative prompts N, and ``temperature`` T,

    log-odds = logsumexp(l_P / T) - logsumexp(l_N / T)

which is the log-odds of "some positive prompt" under a softmax over all prompts. For SigLIP,
whose logits are per-pair sigmoids, the same contrast is used: it compares prompts rather than
trusting each pair's absolute calibration.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from workzone.errors import StageError
from workzone.stages._hf_common import HFParams, HFStage, chunks, load_hf, to_pil
from workzone.types import Evidence, Image, StageOutput

__all__ = ["ZeroShotImageParams", "ZeroShotImageStage", "contrast_log_odds"]


class ZeroShotImageParams(HFParams):
    model: str = Field(default="openai/clip-vit-base-patch32", description="CLIP or SigLIP hub id or local directory")
    positive_prompts: list[str] = Field(
        default_factory=lambda: ["a photo of road work", "a photo of a construction zone on a road",
                                 "a street with traffic cones and road work signs"], min_length=1)
    negative_prompts: list[str] = Field(
        default_factory=lambda: ["a photo of an ordinary road", "a photo of a street with normal traffic",
                                 "a photo of a highway with no construction"], min_length=1)
    temperature: float = Field(default=1.0, gt=0.0, le=100.0, description="divides the logits before the contrast")
    batch_size: int = Field(default=16, ge=1, le=256)

    @model_validator(mode="after")
    def _distinct(self) -> "ZeroShotImageParams":
        both = set(self.positive_prompts) & set(self.negative_prompts)
        if both:
            raise ValueError(f"prompts {sorted(both)} are both positive and negative")
        return self


class ZeroShotImageStage(HFStage):
    """Scores images by how much better road-work prompts match than ordinary-road prompts."""

    kind = "hf_zero_shot_image"
    tiny_params = {"model": "tiny:clip", "positive_prompts": ["road work"], "negative_prompts": ["an empty street"]}
    Params = ZeroShotImageParams
    default_cost = 150.0
    params: ZeroShotImageParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._text_kwargs: dict = {"padding": True}

    def _load_sync(self) -> None:
        model, processor, device = load_hf(self, self.params, "AutoModel", "AutoProcessor")
        if not hasattr(model, "get_image_features") or not hasattr(model, "get_text_features"):
            raise StageError(self.name, f"{self.params.model!r} ({type(model).__name__}) is not a CLIP-style "
                                        "image-text model")
        if model.config.model_type.startswith("siglip"):
            # SigLIP was trained on text padded to 64 tokens; other paddings shift its embeddings.
            self._text_kwargs = {"padding": "max_length", "truncation": True}
        self._model, self._processor, self._device = model, processor, device

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        import torch

        p = self.params
        prompts = p.positive_prompts + p.negative_prompts
        n_pos = len(p.positive_prompts)
        outputs: list[StageOutput] = []
        for part in chunks(batch, p.batch_size):
            inputs = self._processor(text=prompts, images=to_pil(part), return_tensors="pt",
                                     **self._text_kwargs).to(self._device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
            with self._lock, torch.inference_mode():
                logits = self._model(**inputs).logits_per_image.float().cpu().numpy()
            for row in logits:
                z = contrast_log_odds(row[:n_pos], row[n_pos:], p.temperature)
                best = int(np.argmax(row))
                note = f"best prompt: {prompts[best]!r} ({'positive' if best < n_pos else 'negative'})"
                outputs.append(StageOutput(log_odds=z, evidence=Evidence(notes=(note,))))
        return outputs


def contrast_log_odds(positive: np.ndarray, negative: np.ndarray, temperature: float = 1.0) -> float:
    """``logsumexp(positive / T) - logsumexp(negative / T)``, clamped to +-40.

    Examples:
        >>> contrast_log_odds(np.array([2.0]), np.array([1.0]))
        1.0
        >>> round(contrast_log_odds(np.array([0.0, 0.0]), np.array([0.0])), 4)
        0.6931
    """
    def lse(v: np.ndarray) -> float:
        v = np.asarray(v, np.float64) / temperature
        m = float(v.max())
        return m + float(np.log(np.exp(v - m).sum()))

    z = lse(positive) - lse(negative)
    return float(min(max(z, -40.0), 40.0)) if np.isfinite(z) else 0.0
