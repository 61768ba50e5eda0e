"""A text model that weighs the evidence earlier tiers gathered and states a probability.

The last tier of a heavy pipeline: a reasoning LLM (DeepSeek-R1-Distill-Qwen, Qwen3 thinking)
behind an OpenAI-compatible endpoint reads what the detectors, OCR and VLMs reported for an image
(boxes, sign text, each stage's P(road work)) and answers ``{"probability": p, "reason": "..."}``.
It never sees the pixels, so it is cheap next to a VLM and good at resolving disagreements
("cones but no workers, sign reads ROAD CLOSED").

The stage reads the earlier reports that the cascade hands every stage's ``predict`` as ``evidence``
(one sequence of :class:`~workzone.types.StageReport` per image). Without evidence the stage abstains
and sends nothing.

Requests share :class:`~workzone.stages.vlm_openai.OpenAIChat` (through
:class:`~workzone.stages.vlm_openai.OpenAIChatStage`): pooled, bounded, retried, and behind a circuit
breaker, with the same error translation as ``vlm_openai``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any, Mapping, Sequence

from pydantic import Field

from workzone.errors import StageError
from workzone.stages._remote import OpenAIChatStage, OpenAIEndpointParams, collect_outputs
from workzone.types import EarlierReports, Evidence, Image, StageOutput, StageReport, logit

__all__ = ["ReasonerParams", "ReasonerStage", "build_evidence_prompt", "parse_probability"]

DEFAULT_SYSTEM = (
    "You are a careful analyst of street and dashcam images. You cannot see the image; you get the "
    "reports of automatic detectors, which can be wrong. Decide whether the image shows road work or a "
    "construction zone (cones, barriers, road-work signs, workers, construction machines, closed lanes)."
)
DEFAULT_INSTRUCTION = (
    'Answer with JSON only: {"probability": <P(road work) between 0 and 1>, "reason": "<one sentence>"}.'
)


class ReasonerParams(OpenAIEndpointParams):
    request_timeout_s: float = Field(default=60.0, gt=0, le=600, description="reasoning models think before answering")
    system_prompt: str = Field(default=DEFAULT_SYSTEM, min_length=1)
    instruction: str = Field(default=DEFAULT_INSTRUCTION, min_length=1)
    max_tokens: int = Field(default=1024, ge=16, le=32768)
    temperature: float = Field(default=0.0, ge=0, le=2)
    json_mode: bool = Field(default=False, description='send response_format {"type": "json_object"}')
    max_boxes: int = Field(default=12, ge=0, le=200, description="boxes listed per stage (highest scores)")
    max_log_odds: float = Field(default=6.0, gt=0, le=50,
                                description="clip: a stated probability is coarser than a logprob")


class ReasonerStage(OpenAIChatStage):
    """Asks a served text model for P(road work) given the evidence so far."""

    kind = "reasoner_openai"
    tiny_params = {"base_url": "tiny:openai", "model": "fake-vlm", "retries": 0}
    Params = ReasonerParams
    default_cost = 1500.0
    params: ReasonerParams

    async def predict(self, batch: Sequence[Image],
                      evidence: EarlierReports | None = None) -> list[StageOutput]:
        """Score each image from its earlier reports.

        Args:
            batch: the images (only their size is used).
            evidence: per image, the reports of the stages that ran before this one, in order.
        """
        chat = self._loaded_chat()
        if evidence is not None and len(evidence) != len(batch):
            raise StageError(self.name, f"got evidence for {len(evidence)} images and {len(batch)} images")
        reports = [() if evidence is None else tuple(r for r in evidence[i] if r.stage != self.name)
                   for i in range(len(batch))]
        if not any(reports):
            note = "no earlier evidence was passed to the reasoner; abstained"
            return [StageOutput(None, Evidence(notes=(note,))) for _ in batch]
        chat.breaker.check()
        results = await asyncio.gather(*(self._ask(im, reps) for im, reps in zip(batch, reports)),
                                       return_exceptions=True)
        return collect_outputs(results)

    async def _ask(self, image: Image, reports: Sequence[StageReport]) -> StageOutput:
        if not reports:
            return StageOutput(None, Evidence(notes=("no earlier evidence for this image; abstained",)))
        data = await self._loaded_chat().complete(self.request_body(image, reports))
        return self.interpret(data)

    def request_body(self, image: Image, reports: Sequence[StageReport]) -> dict[str, Any]:
        p = self.params
        user = build_evidence_prompt(reports, (image.width, image.height), p.max_boxes) + "\n\n" + p.instruction
        body: dict[str, Any] = {"model": p.model, "max_tokens": p.max_tokens, "temperature": p.temperature,
                                "messages": [{"role": "system", "content": p.system_prompt},
                                             {"role": "user", "content": user}]}
        if p.json_mode:
            body["response_format"] = {"type": "json_object"}
        body.update(p.extra_body)
        return body

    def interpret(self, data: Mapping[str, Any]) -> StageOutput:
        message = data["choices"][0]["message"]
        text = str(message.get("content") or "")
        parsed = parse_probability(text)
        if parsed is None and message.get("reasoning_content"):
            # No reasoning parser on the server and the answer ran into the thinking text.
            parsed = parse_probability(str(message["reasoning_content"]))
        if parsed is None:
            note = f"{self.params.model} gave no probability: {text.strip()[:120]!r}; abstained"
            return StageOutput(None, Evidence(notes=(note,)))
        prob, reason = parsed
        m = self.params.max_log_odds
        z = max(-m, min(m, logit(prob, eps=1e-9)))
        note = f"{self.params.model}: P(road work)={prob:.3f}" + (f": {reason[:240]}" if reason else "")
        return StageOutput(z, Evidence(notes=(note,)))


def build_evidence_prompt(reports: Sequence[StageReport], size: tuple[int, int] | None = None,
                          max_boxes: int = 12) -> str:
    """A plain-text digest of the reports: per tier and stage, the score, boxes, text and notes.

    Examples:
        >>> from workzone.types import Box, Evidence, StageReport
        >>> r = StageReport("det", "ultralytics", 0, 1.0, Evidence(boxes=(Box("cone", 0.9, 1, 2, 3, 4),)), 5.0)
        >>> print(build_evidence_prompt([r]))
        Reports of the automatic stages, in the order they ran:
        - tier 0, stage "det" (ultralytics): P(road work) = 0.731
          detections: cone 0.90 at [1, 2, 3, 4]
    """
    lines = ["Reports of the automatic stages, in the order they ran:"]
    if size is not None:
        lines.insert(0, f"Image size: {size[0]} x {size[1]} pixels.")
    for r in reports:
        head = f'- tier {r.tier + 1}, stage "{r.stage}" ({r.kind}): '
        if r.error:
            lines.append(head + f"failed ({r.error[:120]}); ignore it")
            continue
        lines.append(head + ("abstained" if r.probability is None else f"P(road work) = {r.probability:.3f}"))
        ev = r.evidence
        if ev.boxes:
            boxes = sorted(ev.boxes, key=lambda b: b.score, reverse=True)[:max_boxes]
            shown = "; ".join(f"{b.label} {b.score:.2f} at [{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}]"
                              for b in boxes)
            more = f" (+{len(ev.boxes) - len(boxes)} more)" if len(ev.boxes) > len(boxes) else ""
            lines.append(f"  detections: {shown}{more}")
        if ev.texts:
            reads = "; ".join(f'"{t.text}" {t.score:.2f}' + (f' (matches "{t.matched}")' if t.matched else "")
                              for t in ev.texts[:max_boxes])
            lines.append(f"  text read: {reads}")
        for note in ev.notes[:4]:
            lines.append(f"  note: {note[:200]}")
    return "\n".join(lines)


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_PROB = re.compile(r'"?probability"?\s*[:=]\s*"?\s*([0-9]*\.?[0-9]+(?:[eE]-?[0-9]+)?)\s*(%)?', re.IGNORECASE)


def parse_probability(text: str) -> tuple[float, str] | None:
    """``(probability, reason)`` from a model's answer, or ``None`` if it states none.

    Accepts the JSON object anywhere in the text (the last one wins, after any ``<think>`` block),
    a percentage (``"80%"`` or ``80``), or a bare ``probability: 0.8`` line.

    Examples:
        >>> parse_probability('<think>cones...</think> {"probability": 0.82, "reason": "cones"}')
        (0.82, 'cones')
        >>> parse_probability('```json\\n{"probability": "75%"}\\n```')
        (0.75, '')
        >>> parse_probability("I think probability: 0.1") is None
        False
        >>> parse_probability("no idea") is None
        True
    """
    text = _THINK.sub(" ", text)
    if "</think>" in text:  # the opening tag was in the prompt (R1 templates): keep what follows
        text = text.rsplit("</think>", 1)[1]
    decoder = json.JSONDecoder()
    found: tuple[float, str] | None = None
    for i, ch in enumerate(text):
        if ch != "{":
            continue
        try:
            obj, _ = decoder.raw_decode(text, i)
        except ValueError:
            continue
        if isinstance(obj, dict) and "probability" in obj:
            prob = _to_probability(obj["probability"])
            if prob is not None:
                found = (prob, str(obj.get("reason", "") or ""))
    if found is not None:
        return found
    matches = _PROB.findall(text)
    if matches:
        value, pct = matches[-1]
        prob = _to_probability(value + pct)
        if prob is not None:
            return prob, ""
    return None


def _to_probability(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        s = value.strip()
        pct = s.endswith("%")
        try:
            v = float(s.rstrip("%").strip())
        except ValueError:
            return None
        if pct:
            v /= 100.0
    elif isinstance(value, (int, float)):
        v = float(value)
    else:
        return None
    if not math.isfinite(v) or v < 0:
        return None
    if 1.0 < v <= 100.0 and v.is_integer():  # "80" meant 80 %; "1.7" means nothing sure
        v /= 100.0
    return v if v <= 1.0 else None
