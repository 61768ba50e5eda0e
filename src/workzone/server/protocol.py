"""Wire format of the HTTP API: request and response models, with every field documented.

These models are the OpenAPI schema and hold no logic. The answer's models (``DecisionResponse`` and the
parts of it) live beside the one function that shapes the answer, :func:`workzone.answer.public_answer`,
and are re-exported here; ``TierEventModel`` mirrors :class:`workzone.cascade.TierEvent`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workzone.answer import BoxModel, DecisionResponse, EvidenceModel, StageReportModel, TextReadModel

__all__ = [
    "ImageInput", "DetectRequest", "BatchDetectRequest", "BoxModel", "TextReadModel", "EvidenceModel",
    "StageReportModel", "DecisionResponse", "BatchItemResult", "BatchDetectResponse", "TierEventModel",
    "ErrorDetail", "ErrorResponse", "HealthResponse", "ReadyResponse", "PipelineResponse",
]

_IN = ConfigDict(extra="forbid")


class ImageInput(BaseModel):
    """One image given inline (base64) or by URL; exactly one of the two."""

    model_config = _IN
    image: str | None = Field(default=None, description="the encoded image (JPEG, PNG, WebP, BMP, GIF, TIFF) as "
                              "base64, optionally as a data URL (data:image/jpeg;base64,...)")
    url: str | None = Field(default=None, description="http(s) URL of the image; only when the server allows URL "
                            "inputs, and never to private, loopback or link-local addresses")

    @model_validator(mode="after")
    def _one(self) -> "ImageInput":
        if (self.image is None) == (self.url is None):
            raise ValueError("give exactly one of 'image' (base64) or 'url'")
        return self


class DetectRequest(ImageInput):
    """JSON body of ``POST /v1/detect`` and ``POST /v1/detect/stream``."""

    deadline_s: float | None = Field(default=None, gt=0, description="answer within this many seconds: tiers not "
                                     "finished by then are skipped (capped by the server's maximum); the "
                                     "X-Deadline-S header does the same")


class BatchDetectRequest(BaseModel):
    """JSON body of ``POST /v1/detect/batch``."""

    model_config = _IN
    images: list[ImageInput] = Field(min_length=1, description="the images, answered in the same order")
    deadline_s: float | None = Field(default=None, gt=0, description="deadline for the whole call, in seconds")


class ErrorDetail(BaseModel):
    type: str = Field(description="stable machine-readable error type, e.g. invalid_image, overloaded")
    message: str = Field(description="what was wrong and what to do")
    status: int = Field(description="the HTTP status code")
    detail: Any = Field(default=None, description="per-field problems for validation errors")


class ErrorResponse(BaseModel):
    """Body of every non-2xx answer."""

    error: ErrorDetail = Field(description="what went wrong")


class BatchItemResult(BaseModel):
    index: int = Field(description="position of the image in the request")
    decision: DecisionResponse | None = Field(default=None, description="the answer; null when the image failed")
    error: ErrorDetail | None = Field(default=None, description="why this image could not be decided")


class BatchDetectResponse(BaseModel):
    results: list[BatchItemResult] = Field(description="one result per image, in request order")


class TierEventModel(BaseModel):
    """``event: tier`` of the SSE stream: the image after one tier of the cascade."""

    tier: int = Field(description="index of the tier that just finished")
    tier_name: str = Field(description="its name")
    probability: float = Field(description="fused P(road work) after this tier")
    stages: list[str] = Field(description="stages run so far, in order")
    cost: float = Field(description="cost units spent so far")
    decided: bool = Field(description="true when the image leaves the cascade here")
    reason: str | None = Field(default=None, description="why it left ('confident', 'last tier', 'deadline')")
    route: str | None = Field(default=None, description="the router's choice of this tier's stages and why "
                                                        "(null when the tier has no router)")


class HealthResponse(BaseModel):
    status: Literal["ok"] = Field(description="the process is up and its event loop answers")


class ReadyResponse(BaseModel):
    ready: bool = Field(description="every stage is loaded and warmed up, and the service accepts work")
    state: str = Field(description="created, starting, ready, failed, stopping or stopped")
    load_error: str | None = Field(default=None, description="why the pipeline failed to load")


class StageDescription(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(description="stage name")
    kind: str = Field(description="stage kind")
    cost: float = Field(description="declared cost per image")
    params: dict[str, Any] = Field(description="the stage's validated parameters")
    timeout_s: float | None = Field(default=None, description="per-stage timeout")
    breaker: str | None = Field(default=None, description="circuit breaker state for remote stages, if any")


class TierDescription(BaseModel):
    name: str = Field(description="tier name")
    stages: list[StageDescription] = Field(description="the tier's enabled stages, run concurrently")
    fusion: dict[str, Any] = Field(description="bias and weights of the log-odds pooling after this tier")
    exit: dict[str, Any] = Field(description="exit thresholds (lower, upper) on the fused probability")


class PipelineResponse(BaseModel):
    name: str = Field(description="pipeline name")
    description: str = Field(description="what the pipeline is for")
    version: int = Field(description="pipeline file format version")
    deadline_s: float | None = Field(description="the pipeline's default deadline")
    state: str = Field(description="service state")
    ready: bool = Field(description="every stage is loaded and warmed up")
    load_error: str | None = Field(default=None, description="why the pipeline failed to load")
    tiers: list[TierDescription] = Field(description="tiers in the order images go through them")
