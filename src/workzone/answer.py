"""The public answer: the one JSON shape of a decision, and the models that describe it.

:func:`public_answer` is the only code that turns a :class:`~workzone.types.Decision` into JSON. The
HTTP server returns it, ``workzone detect --json`` prints it, ``workzone eval --predictions`` writes it
per image, batch rows and the miner's explanation are read from it. The pydantic models below are its
OpenAPI schema (the server's ``response_model``); ``tests/test_answer.py`` checks that every answer the
function produces (evidence, failed stages, abstentions, degraded answers) validates against them and
dumps back unchanged.

A failed stage's ``error`` is its error type only (``DeadlineExceeded``, ``BackendUnavailable``, ...):
the full text may name a backend URL or a model path, and an answer may leave the machine.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workzone.types import Decision, Evidence, StageReport

__all__ = ["public_answer", "BoxModel", "TextReadModel", "EvidenceModel", "StageReportModel", "DecisionResponse"]


def public_answer(decision: Decision) -> dict[str, Any]:
    """The decision as the JSON object every front end emits (:class:`DecisionResponse` describes it).

    Examples:
        >>> from workzone.types import Decision
        >>> a = public_answer(Decision(0.8, 0, "fast", (), (0.8,), 3.0, 1.0))
        >>> a["label"], a["label_name"], a["stages"]
        (True, 'roadwork', [])
    """
    return {
        "probability": decision.probability,
        "label": decision.label,
        "label_name": "roadwork" if decision.label else "none",
        "exit_tier": decision.exit_tier,
        "exit_tier_name": decision.exit_tier_name,
        "stages": [_stage(rep) for rep in decision.stages],
        "tier_probabilities": list(decision.tier_probabilities),
        "latency_ms": decision.latency_ms,
        "cost": decision.cost,
        "source": decision.source,
        "reason": decision.reason,
        "routes": list(decision.routes),
        "degraded": decision.degraded,
        "degraded_reason": decision.degraded_reason,
    }


def _stage(rep: StageReport) -> dict[str, Any]:
    return {
        "stage": rep.stage,
        "kind": rep.kind,
        "tier": rep.tier,
        "log_odds": rep.log_odds,
        "probability": rep.probability,
        "evidence": _evidence(rep.evidence),
        "latency_ms": rep.latency_ms,
        # The type only: the message stays in the process that ran the stage (see the module docstring).
        "error": None if rep.error is None else (rep.error_type or "StageError"),
    }


def _evidence(ev: Evidence) -> dict[str, Any]:
    return {
        "boxes": [{"label": b.label, "score": b.score, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2}
                  for b in ev.boxes],
        "texts": [{"text": t.text, "score": t.score, "matched": t.matched,
                   "box": None if t.box is None else list(t.box)} for t in ev.texts],
        "notes": list(ev.notes),
    }


# extra="forbid": a key the function adds without describing it here fails the test, not a client.
_OUT = ConfigDict(extra="forbid")


class BoxModel(BaseModel):
    model_config = _OUT
    label: str = Field(description="what was detected")
    score: float = Field(ge=0, le=1, description="detector confidence")
    x1: float = Field(description="left edge, pixels of the decoded image")
    y1: float = Field(description="top edge, pixels")
    x2: float = Field(description="right edge, pixels")
    y2: float = Field(description="bottom edge, pixels")


class TextReadModel(BaseModel):
    model_config = _OUT
    text: str = Field(description="text read in the image")
    score: float = Field(description="recognition confidence")
    matched: str | None = Field(default=None, description="road-work lexicon entry the text matched, if any")
    box: tuple[float, float, float, float] | None = Field(default=None, description="(x1, y1, x2, y2) of the text")


class EvidenceModel(BaseModel):
    model_config = _OUT
    boxes: list[BoxModel] = Field(default_factory=list, description="detections supporting the score")
    texts: list[TextReadModel] = Field(default_factory=list, description="text read in the image")
    notes: list[str] = Field(default_factory=list, description="free-form remarks of the stage")


class StageReportModel(BaseModel):
    model_config = _OUT
    stage: str = Field(description="stage name in the pipeline")
    kind: str = Field(description="stage kind (onnx_classifier, sign_ocr, vlm_openai, ...)")
    tier: int = Field(description="index of the tier the stage belongs to")
    log_odds: float | None = Field(description="the stage's road-work evidence in log-odds; null = abstained or failed")
    probability: float | None = Field(description="sigmoid(log_odds); null when log_odds is null")
    evidence: EvidenceModel = Field(description="what the stage saw")
    latency_ms: float = Field(description="stage wall time per image of its batch, in milliseconds")
    error: str | None = Field(default=None, description="the error type (DeadlineExceeded, BackendUnavailable, ...) "
                              "when the stage failed or timed out; null when it answered")


class DecisionResponse(BaseModel):
    """The cascade's answer for one image (:func:`public_answer`)."""

    model_config = _OUT
    probability: float = Field(ge=0, le=1, description="calibrated P(road work)")
    label: bool = Field(description="probability > 0.5 (strictly above one half is road work)")
    label_name: Literal["roadwork", "none"] = Field(description="the label as a word")
    exit_tier: int = Field(description="index (from 0) of the tier after which the image was decided; text (CLI, "
                           "page, report) numbers tiers from 1")
    exit_tier_name: str = Field(description="that tier's name")
    stages: list[StageReportModel] = Field(description="every stage that ran on the image, in order")
    tier_probabilities: list[float] = Field(description="the fused probability after each tier that ran")
    latency_ms: float = Field(description="cascade wall time for the batch up to this image's exit, ms")
    cost: float = Field(description="declared cost units spent (ms of the reference CPU)")
    source: str = Field(description="where the image came from (upload name, 'body', 'base64', URL, path)")
    reason: str = Field(description="why it exited: 'confident', 'last tier' or 'deadline'")
    routes: list[str] = Field(default_factory=list, description="per routed tier: which of its stages ran and why")
    degraded: bool = Field(default=False, description="true when the answer is less informed than the pipeline "
                           "intends: no stage ran (the prior), a failed stage was skipped, or the deadline "
                           "skipped tiers")
    degraded_reason: str | None = Field(default=None, description="why the answer is degraded (stage names and "
                                        "error types only)")
