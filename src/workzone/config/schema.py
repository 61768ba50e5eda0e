"""Typed pipeline configuration.

A pipeline is a list of tiers; each tier is a list of stages plus the fusion that turns every
stage score gathered so far into a probability, and the exit thresholds that let confident images
leave. Fusion and thresholds are written by ``workzone tune``; nothing here is a hand-set default
of the shipped pipeline.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workzone.engine_options import EngineOptions
from workzone.routing import RouterConfig
from workzone.stages.base import StageParams
from workzone.stages.registry import get_stage_class, validate_params

__all__ = ["ExitThresholds", "FusionParams", "StageSpec", "TierConfig", "PipelineConfig", "COMMON_STAGE_KEYS"]

_STRICT = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

#: Keys of a stage entry that belong to the cascade; every other key is a param of the stage kind.
COMMON_STAGE_KEYS = ("name", "kind", "enabled", "timeout_s", "cost", "device", "engine")


class LocatedValueError(ValueError):
    """A cross-field check's error that knows which key it is about (``loc`` below the model).

    Pydantic reports a model validator's error at the model itself; the loader appends ``loc`` so
    the message names the file line of the offending key.
    """

    def __init__(self, message: str, loc: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.loc = loc


class ExitThresholds(BaseModel):
    """An image leaves after this tier when P(road work) >= upper or <= lower."""

    model_config = _STRICT
    lower: float | None = Field(default=None, ge=0.0, le=1.0)
    upper: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> "ExitThresholds":
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) must not be above upper ({self.upper})")
        return self


class FusionParams(BaseModel):
    """Weighted log-odds pooling: z = bias + sum(weight[s] * log_odds[s]); p = sigmoid(z).

    A stage that abstains or failed contributes nothing. The weights come from a logistic
    regression fitted by ``workzone tune``, so p is calibrated on the data it was fitted on.
    """

    model_config = _STRICT
    bias: float = 0.0
    weights: dict[str, float] = Field(default_factory=dict)
    fitted: bool = False
    stages: tuple[str, ...] | None = Field(
        default=None, description="the stages this tier pools, which `workzone tune` fits weights for (default: "
                                  "every stage of this tier and the earlier ones); the others' scores stay out of "
                                  "this tier's answer, e.g. a verifier whose decision already holds the detector's")


class StageSpec(BaseModel):
    """One stage entry of a tier; ``params`` holds the kind's own validated parameters."""

    model_config = _STRICT
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: str = Field(min_length=1)
    enabled: bool = True
    timeout_s: float | None = Field(default=None, gt=0)
    cost: float | None = Field(default=None, ge=0, description="ms per image on the reference machine")
    device: str | None = None
    engine: EngineOptions | None = Field(default=None, description="serving options of the stage's engine "
                                                                    "(vlm_openai, reasoner_openai; workzone plan)")
    params: StageParams = Field(default_factory=StageParams)

    def nested(self) -> list["StageSpec"]:
        """The stages this one builds inside itself (same process, same device), validated.

        ``hf_depth`` wraps a detector: ``workzone check`` checks its files, ``workzone plan`` adds its memory.
        """
        out = []
        for suffix, entry in get_stage_class(self.kind).nested_specs(self.params):
            raw = {k: v for k, v in entry.items() if k != "kind"}
            cls = get_stage_class(entry["kind"])
            name = f"{self.name}.{suffix}"
            out.append(StageSpec(name=name, kind=cls.kind, device=self.device, params=validate_params(cls, name, raw)))
        return out


class TierConfig(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1)
    stages: tuple[StageSpec, ...] = Field(min_length=1)
    fusion: FusionParams = Field(default_factory=FusionParams)
    exit: ExitThresholds = Field(default_factory=ExitThresholds)
    route: RouterConfig | None = Field(default=None, description="per-image choice of this tier's stages "
                                                                 "(workzone.routing); none: every stage runs")


class PipelineConfig(BaseModel):
    """A whole pipeline file."""

    model_config = _STRICT
    name: str = "pipeline"
    description: str = ""
    version: int = Field(default=1, ge=1, le=1)
    deadline_s: float | None = Field(default=None, gt=0, description="default per-request deadline")
    tiers: tuple[TierConfig, ...] = Field(min_length=1)
    tuning: dict[str, Any] = Field(default_factory=dict, description="how fusion and exits were fitted")

    @model_validator(mode="after")
    def _consistent(self) -> "PipelineConfig":
        seen: list[str] = []
        for ti, tier in enumerate(self.tiers):
            for si, st in enumerate(tier.stages):
                if st.name in seen:
                    raise LocatedValueError(f"stage name {st.name!r} is used twice; stage names must be unique",
                                            ("tiers", ti, "stages", si, "name"))
                seen.append(st.name)
            if tier.route is not None:
                names = {st.name for st in tier.stages}
                stray = sorted({s for rule in tier.route.rules for s in rule.stages} - names)
                if stray:
                    raise ValueError(f"tier {tier.name!r}: route names {stray}, which are not stages of this tier "
                                     f"({sorted(names)})")
            unknown = [k for k in tier.fusion.weights if k not in seen]
            if unknown:
                raise LocatedValueError(
                    f"tier {tier.name!r}: fusion weights name {unknown}, which are not stages of this tier "
                    f"or an earlier one ({seen})", ("tiers", ti, "fusion", "weights", unknown[0])
                )
            pooled = tier.fusion.stages
            if pooled is not None:
                stray = [k for k in pooled if k not in seen]
                if stray or not pooled:
                    raise LocatedValueError(
                        f"tier {tier.name!r}: fusion stages must name at least one stage of this tier or an earlier "
                        f"one ({seen}); {stray or 'none'} given", ("tiers", ti, "fusion", "stages"))
                outside = [k for k in tier.fusion.weights if k not in pooled]
                if outside:
                    raise LocatedValueError(
                        f"tier {tier.name!r}: fusion weights name {outside}, which its fusion stages {list(pooled)} "
                        "leave out", ("tiers", ti, "fusion", "weights", outside[0]))
        return self

    def stage_names(self) -> list[str]:
        return [s.name for t in self.tiers for s in t.stages]
