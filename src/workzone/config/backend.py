"""Switch a pipeline's ONNX stages to a backend (and torch options) without editing its YAML."""

from __future__ import annotations

from typing import Any, Collection, Mapping

from workzone.config.schema import PipelineConfig
from workzone.stages._torch_backend import TorchBackendParams

__all__ = ["with_backend", "with_stage_params"]


def with_backend(config: PipelineConfig, backend: str, *, stages: Collection[str] | None = None,
                 **torch_options: Any) -> PipelineConfig:
    """``config`` with every stage that has a ``backend`` param set to ``backend``.

    Args:
        config: a validated pipeline.
        backend: ``auto``, ``onnxruntime`` or ``torch``.
        stages: only these stage names (default: all that have the param).
        **torch_options: other :class:`~workzone.stages._torch_backend.TorchBackendParams` fields
            (``compile``, ``precision``, ``max_batch``) for the same stages.

    Returns:
        A new, validated config; stages of other kinds are unchanged.
    """
    return with_stage_params(config, {spec.name: {"backend": backend, **torch_options}
                                      for tier in config.tiers for spec in tier.stages
                                      if isinstance(spec.params, TorchBackendParams)
                                      and (stages is None or spec.name in stages)})


def with_stage_params(config: PipelineConfig, updates: Mapping[str, Mapping[str, Any]]) -> PipelineConfig:
    """``config`` with some stages' params changed: ``updates`` maps a stage name to the fields to set.

    Returns:
        A new config, each changed stage's params validated again; other stages unchanged.
    """
    tiers = []
    for tier in config.tiers:
        specs = []
        for spec in tier.stages:
            if spec.name in updates:
                params = type(spec.params).model_validate({**spec.params.model_dump(), **updates[spec.name]})
                spec = spec.model_copy(update={"params": params})
            specs.append(spec)
        tiers.append(tier.model_copy(update={"stages": tuple(specs)}))
    return config.model_copy(update={"tiers": tuple(tiers)})
