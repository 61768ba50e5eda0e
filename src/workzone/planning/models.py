"""The planner's table of models: parameter counts and attention shapes (public model cards, rounded).

A model id not in the table is reported by the planner, never guessed for an engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["ModelSpec", "MODEL_TABLE", "lookup_model", "GiB"]

GiB = 1024 ** 3


@dataclass(frozen=True)
class ModelSpec:
    """What the planner knows about one model family member.

    Attributes:
        key: normalised substring that identifies it in a model id (``qwen3-vl-8b``).
        params_b: parameters, in billions.
        family: ``vlm`` / ``llm`` are served by an engine (KV cache); ``vision`` runs in-process.
        layers, kv_heads, head_dim: language-model attention shape, for the KV cache.
        act_gb: activation memory per image in flight (vision models; estimate).
        px_per_token: side in pixels of one visual token after merging (VLMs).
        reasoning_parser: vLLM/SGLang reasoning parser name for thinking models.
    """

    key: str
    params_b: float
    family: Literal["vlm", "llm", "vision"]
    layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    act_gb: float = 0.0
    px_per_token: int = 32
    reasoning_parser: str | None = None


def _vlm(key: str, b: float, layers: int, kv: int, px: int = 32) -> ModelSpec:
    return ModelSpec(key, b, "vlm", layers, kv, 128, px_per_token=px)


def _llm(key: str, b: float, layers: int, kv: int, parser: str | None) -> ModelSpec:
    return ModelSpec(key, b, "llm", layers, kv, 128, reasoning_parser=parser)


def _vis(key: str, b: float, act: float) -> ModelSpec:
    return ModelSpec(key, b, "vision", act_gb=act)


MODEL_TABLE: tuple[ModelSpec, ...] = (
    # Qwen3-VL (Instruct and Thinking share the architecture): text stack of Qwen3, 16 px patches merged 2x2.
    _vlm("qwen3-vl-2b", 2.13, 28, 8), _vlm("qwen3-vl-4b", 4.44, 36, 8), _vlm("qwen3-vl-8b", 8.77, 36, 8),
    _vlm("qwen3-vl-32b", 33.4, 64, 8), _vlm("qwen3-vl-30b-a3b", 31.1, 48, 4),
    # Qwen2.5-VL: 14 px patches merged 2x2.
    _vlm("qwen2-5-vl-3b", 3.75, 36, 2, 28), _vlm("qwen2-5-vl-7b", 8.29, 28, 4, 28),
    _vlm("qwen2-5-vl-32b", 33.5, 64, 8, 28), _vlm("qwen2-5-vl-72b", 73.4, 80, 8, 28),
    # InternVL3.5: 448 px tiles of 256 tokens (28 px per token), Qwen3 language model.
    _vlm("internvl3-5-2b", 2.35, 28, 8, 28), _vlm("internvl3-5-4b", 4.73, 36, 8, 28),
    _vlm("internvl3-5-8b", 8.53, 36, 8, 28), _vlm("internvl3-5-38b", 38.4, 64, 8, 28),
    # Reasoners (text only).
    _llm("deepseek-r1-distill-qwen-1-5b", 1.78, 28, 2, "deepseek_r1"),
    _llm("deepseek-r1-distill-qwen-7b", 7.62, 28, 4, "deepseek_r1"),
    _llm("deepseek-r1-distill-qwen-14b", 14.8, 48, 8, "deepseek_r1"),
    _llm("deepseek-r1-distill-qwen-32b", 32.8, 64, 8, "deepseek_r1"),
    _llm("qwen3-4b", 4.02, 36, 8, "qwen3"), _llm("qwen3-8b", 8.19, 36, 8, "qwen3"),
    _llm("qwen3-14b", 14.8, 40, 8, "qwen3"), _llm("qwen3-32b", 32.8, 64, 8, "qwen3"),
    # Open-vocabulary detectors, depth, segmentation, zero-shot (activations at their default input sizes).
    _vis("owlv2-base", 0.155, 0.35), _vis("owlv2-large", 0.438, 0.9),
    _vis("owlvit-base", 0.153, 0.15), _vis("owlvit-large", 0.434, 0.4),
    _vis("grounding-dino-tiny", 0.172, 0.5), _vis("grounding-dino-base", 0.233, 0.6),
    _vis("depth-anything-v2-small", 0.0248, 0.1), _vis("depth-anything-v2-base", 0.0975, 0.2),
    _vis("depth-anything-v2-large", 0.335, 0.4), _vis("sam3", 0.848, 1.0),
    _vis("siglip-base", 0.203, 0.05), _vis("siglip-large", 0.652, 0.1), _vis("siglip-so400m", 0.878, 0.15),
    _vis("siglip2-base", 0.375, 0.05), _vis("siglip2-large", 0.882, 0.1), _vis("siglip2-so400m", 1.14, 0.15),
    _vis("clip-vit-base-patch32", 0.151, 0.03), _vis("clip-vit-base-patch16", 0.150, 0.05),
    _vis("clip-vit-large-patch14", 0.428, 0.1),
    # Real-time detectors at 640 px.
    *(_vis(f"yolo11{s}", b, a) for s, b, a in (("n", 0.0026, 0.05), ("s", 0.0094, 0.08), ("m", 0.0201, 0.15),
                                                 ("l", 0.0253, 0.2), ("x", 0.0569, 0.3))),
    *(_vis(f"yolo26{s}", b, a) for s, b, a in (("n", 0.0024, 0.05), ("s", 0.0095, 0.08), ("m", 0.0204, 0.15),
                                                 ("l", 0.0248, 0.2), ("x", 0.0557, 0.3))),
    *(_vis(f"rfdetr-{v}", b, a) for v, b, a in (("nano", 0.030, 0.1), ("small", 0.032, 0.15),
                                                  ("medium", 0.034, 0.2), ("base", 0.029, 0.2), ("large", 0.128, 0.3))),
    # D-FINE (paper, COCO and Objects365 checkpoints alike) and YOLO-World (v1 and v2 heads; CLIP text encoder
    # only when the vocabulary is set at load, not counted).
    *(_vis(f"dfine-{v}", b, a) for v, b, a in (("nano", 0.004, 0.05), ("small", 0.010, 0.08), ("medium", 0.019, 0.12),
                                                 ("large", 0.031, 0.2), ("xlarge", 0.062, 0.3))),
    *(_vis(f"yolov8{s}-world", b, a) for s, b, a in (("s", 0.013, 0.08), ("m", 0.029, 0.15), ("l", 0.048, 0.2),
                                                       ("x", 0.073, 0.3))),
)


def _normalise(model_id: str) -> str:
    return re.sub(r"[._\s]+", "-", model_id.lower())


def lookup_model(model_id: str) -> ModelSpec | None:
    """The table entry whose key occurs in ``model_id`` (longest key wins), or ``None``.

    Examples:
        >>> lookup_model("Qwen/Qwen3-VL-8B-Instruct-FP8").params_b
        8.77
        >>> lookup_model("OpenGVLab/InternVL3_5-8B").key
        'internvl3-5-8b'
        >>> lookup_model("my-own-model") is None
        True
    """
    norm = _normalise(model_id)
    hits = [m for m in MODEL_TABLE if m.key in norm]
    return max(hits, key=lambda m: len(m.key)) if hits else None
