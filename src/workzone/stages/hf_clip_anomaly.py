"""Zero-shot anomaly scoring with a CLIP model's patch tokens (WinCLIP / AnomalyCLIP style).

Object-agnostic prompts describe a *normal* road and an *abnormal* one ("a road with an obstruction
on it"). Each image patch token, projected into the joint space the way CLIP projects its class
token (post-layernorm, then the visual projection), is compared with the mean normal and mean
abnormal text embeddings; the softmax over the two (at CLIP's learned temperature) is the patch's
P(abnormal), the heat map. The image's log-odds is the mean of the global (class-token) contrast
and the mean of the ``top_k`` patch contrasts.

Hub models need the ``hf`` extra and a local copy or cache (``openai/clip-vit-base-patch16``,
``laion/CLIP-ViT-L-14-laion2B-s32B-b82K``); AnomalyCLIP's learned prompts can be given as plain
prompt text only. Evidence is the same as ``patch_anomaly``'s: the hottest patches as ``anomaly``
boxes and the heat map in the notes.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from workzone.errors import StageError
from workzone.stages._hf_common import HFParams, HFStage, chunks, load_hf, to_pil
from workzone.stages.patch_anomaly import anomaly_evidence
from workzone.types import Image, StageOutput

__all__ = ["ClipAnomalyParams", "ClipAnomalyStage"]


class ClipAnomalyParams(HFParams):
    model: str = Field(default="openai/clip-vit-base-patch16", description="CLIP hub id or local directory")
    normal_prompts: list[str] = Field(
        default_factory=lambda: ["a photo of an ordinary road", "a photo of a normal street", "a clear road"],
        min_length=1)
    abnormal_prompts: list[str] = Field(
        default_factory=lambda: ["a photo of a road with an obstruction on it", "a photo of an unusual object on a road",
                                 "a damaged road surface"], min_length=1)
    top_k: int = Field(default=3, ge=1, le=256, description="patches averaged into the image score")
    boxes: int = Field(default=3, ge=0, le=32, description="hottest patches reported as 'anomaly' boxes")
    grid: int = Field(default=4, ge=1, le=16, description="side of the heat map written into the notes")
    batch_size: int = Field(default=8, ge=1, le=256)

    @model_validator(mode="after")
    def _distinct(self) -> "ClipAnomalyParams":
        both = set(self.normal_prompts) & set(self.abnormal_prompts)
        if both:
            raise ValueError(f"prompts {sorted(both)} are both normal and abnormal")
        return self


class ClipAnomalyStage(HFStage):
    """Scores how much better the image's patches match 'abnormal road' than 'normal road' prompts."""

    kind = "hf_clip_anomaly"
    tiny_params = {"model": "tiny:clip", "normal_prompts": ["an empty street"], "abnormal_prompts": ["a traffic cone"]}
    Params = ClipAnomalyParams
    default_cost = 150.0
    params: ClipAnomalyParams

    def _load_sync(self) -> None:
        model, processor, device = load_hf(self, self.params, "AutoModel", "AutoProcessor")
        if not all(hasattr(model, a) for a in ("vision_model", "visual_projection", "logit_scale")):
            raise StageError(self.name, f"{self.params.model!r} ({type(model).__name__}) is not a CLIP model "
                                        "(needs vision_model, visual_projection and logit_scale)")
        self._model, self._processor, self._device = model, processor, device

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        import torch

        p = self.params
        prompts = p.normal_prompts + p.abnormal_prompts
        n_norm = len(p.normal_prompts)
        outputs: list[StageOutput] = []
        for part in chunks(batch, p.batch_size):
            inputs = self._processor(text=prompts, images=to_pil(part), return_tensors="pt",
                                     padding=True).to(self._device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
            with self._lock, torch.inference_mode():
                out = self._model(**inputs)
                tokens = out.vision_model_output.last_hidden_state[:, 1:]  # drop the class token
                patches = self._model.visual_projection(self._model.vision_model.post_layernorm(tokens))
                text = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
                pair = torch.nn.functional.normalize(torch.stack([text[:n_norm].mean(0), text[n_norm:].mean(0)]), dim=-1)
                scale = float(self._model.logit_scale.exp())
                glob = (torch.nn.functional.normalize(out.image_embeds.float(), dim=-1) @ pair.T) * scale
                local = (torch.nn.functional.normalize(patches.float(), dim=-1) @ pair.T) * scale
            glob_z = (glob[:, 1] - glob[:, 0]).cpu().numpy()
            local_z = (local[..., 1] - local[..., 0]).cpu().numpy()  # (n, P)
            for img, gz, lz in zip(part, glob_z, local_z):
                side = int(round(np.sqrt(lz.size)))
                if side * side != lz.size:
                    raise StageError(self.name, f"{lz.size} patch tokens do not form a square grid")
                top = float(np.sort(lz)[-p.top_k:].mean())
                z = float(np.clip(0.5 * (float(gz) + top), -40.0, 40.0))
                heat = 1.0 / (1.0 + np.exp(-np.clip(lz.reshape(side, side), -40, 40)))
                note = f"clip anomaly: global {float(gz):+.2f}, top-{p.top_k} patches {top:+.2f} (log-odds abnormal)"
                outputs.append(StageOutput(z, anomaly_evidence(img, heat, boxes=p.boxes, grid=p.grid, notes=(note,))))
        return outputs
