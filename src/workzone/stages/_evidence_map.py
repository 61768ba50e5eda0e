"""Detector classes -> road-work evidence, and boxes -> one log-odds score.

Every detector stage (``onnx_detector``, ``ultralytics``, ``rfdetr``, ``hf_zero_shot_detection``,
``hf_depth``) turns its raw detections into a :class:`~workzone.types.StageOutput` here, so the
scoring rule lives in one place.

The rule is a noisy-OR: each mapped box is an independent chance that road work is present,
``p_i = weight(evidence) * confidence``, and

    P(road work) = 1 - (1 - prior) * prod_i (1 - p_i)

which is returned as log-odds. ``prior`` is what the stage says when it sees nothing (absence of
cones is weak evidence against road work). Weights are defaults to be overridden by tuned
pipeline files, not truths.

A detector's label (``"traffic_cone"``, ``"Traffic Cone"``, ``"construction barrel"``) is matched
against the pipeline's ``labels`` first, then against built-in aliases, after normalising case,
spaces, hyphens and underscores. Unmapped labels (COCO's ``"dog"``) are ignored.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable, Iterable, NamedTuple, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workzone.types import Box, Evidence, StageOutput, logit

__all__ = ["ClassMap", "Detection", "DEFAULT_WEIGHTS", "DEFAULT_ALIASES", "normalise_label",
           "detections_to_output", "score_boxes", "check_prompts", "outputs_in_chunks"]

#: Road-work evidence classes and how strongly one confident box of each implies road work.
DEFAULT_WEIGHTS: dict[str, float] = {
    "cone": 0.85,
    "drum": 0.85,
    "barricade": 0.85,
    "arrow_board": 0.95,
    "sign": 0.9,          # road-work / construction / detour signs
    "barrier": 0.6,       # jersey barriers and fences also line ordinary roads
    "machine": 0.7,       # excavators, rollers, pavers
    "worker": 0.7,        # people in high-visibility vests
    "light": 0.5,         # flashing amber warning lights
}

#: Common detector label spellings (normalised) -> evidence class.
DEFAULT_ALIASES: dict[str, str] = {
    **{k: "cone" for k in ("cone", "traffic cone", "safety cone", "road cone", "pylon", "bollard cone")},
    **{k: "drum" for k in ("drum", "barrel", "traffic drum", "construction barrel", "traffic barrel")},
    **{k: "barricade" for k in ("barricade", "road barricade", "construction barricade", "a frame barricade")},
    **{k: "arrow_board" for k in ("arrow board", "arrowboard", "arrow panel", "flashing arrow board")},
    **{k: "sign" for k in ("sign", "road work sign", "roadwork sign", "construction sign", "work zone sign",
                           "detour sign", "temporary traffic control sign", "tcd sign")},
    **{k: "barrier" for k in ("barrier", "road barrier", "jersey barrier", "concrete barrier", "fence",
                              "construction fence", "temporary fence")},
    **{k: "machine" for k in ("machine", "excavator", "bulldozer", "backhoe", "road roller", "roller",
                              "paver", "construction vehicle", "construction machine", "work vehicle",
                              "dump truck", "crane")},
    **{k: "worker" for k in ("worker", "construction worker", "road worker", "person in safety vest",
                             "safety vest", "high visibility vest", "workman", "flagger")},
    **{k: "light" for k in ("light", "warning light", "flashing light", "beacon")},
}

_SEP = re.compile(r"[\s_\-]+")


def normalise_label(label: str) -> str:
    """Lower-case, collapse spaces, hyphens and underscores.

    Examples:
        >>> normalise_label("Traffic_Cone")
        'traffic cone'
    """
    return _SEP.sub(" ", label.strip().lower()).strip()


class Detection(NamedTuple):
    """One raw detector box in pixels of the decoded image, before mapping."""

    label: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float


class ClassMap(BaseModel):
    """How a detector's classes count as road-work evidence (the ``classes`` param of detectors).

    Attributes:
        labels: detector label -> evidence class; consulted before the built-in aliases.
        weights: evidence class -> weight in [0, 1], merged over :data:`DEFAULT_WEIGHTS`; a new key
            declares a new evidence class, a weight of 0 silences one.
        prior: P(road work) the stage reports when it finds no evidence.
        builtin_aliases: also match :data:`DEFAULT_ALIASES` (turn off for a detector whose label
            names mean something else).
        min_score: boxes below this confidence are ignored for scoring and evidence.
        max_boxes: at most this many evidence boxes are reported per image (highest first).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: dict[str, str] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)
    prior: float = Field(default=0.1, gt=0.0, lt=1.0)
    builtin_aliases: bool = True
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    max_boxes: int = Field(default=50, ge=1, le=1000)

    @model_validator(mode="after")
    def _check(self) -> "ClassMap":
        for name, w in self.weights.items():
            if not (0.0 <= w <= 1.0) or not math.isfinite(w):
                raise ValueError(f"weights.{name}: expected a weight in [0, 1], got {w}")
        known = self.evidence_weights()
        for label, ev in self.labels.items():
            if ev not in known:
                raise ValueError(f"labels.{label}: unknown evidence class {ev!r}; use one of "
                                 f"{', '.join(sorted(known))} or declare it under weights")
        return self

    def evidence_weights(self) -> dict[str, float]:
        """Every evidence class with its effective weight."""
        return {**DEFAULT_WEIGHTS, **self.weights}

    def resolve(self, label: str) -> tuple[str, float] | None:
        """The (evidence class, weight) a detector label counts as, or None if it does not count.

        Examples:
            >>> ClassMap().resolve("Traffic_Cone")
            ('cone', 0.85)
            >>> ClassMap().resolve("dog") is None
            True
        """
        weights = self.evidence_weights()
        norm = normalise_label(label)
        explicit = {normalise_label(k): v for k, v in self.labels.items()}
        ev = explicit.get(norm)
        if ev is None and self.builtin_aliases:
            ev = DEFAULT_ALIASES.get(norm)
        if ev is None and norm in {normalise_label(k) for k in weights}:
            # An evidence name itself ("arrow_board") maps to itself: re-scoring already mapped boxes
            # (the depth stage does) must give the same classes back.
            ev = next(k for k in weights if normalise_label(k) == norm)
        if ev is None:
            return None
        return ev, float(weights[ev])


def score_boxes(boxes: Iterable[Box], class_map: ClassMap) -> float:
    """Noisy-OR log-odds of already mapped evidence boxes (labels are evidence classes).

    Args:
        boxes: evidence boxes whose ``label`` resolves through ``class_map``.
        class_map: weights and prior.

    Returns:
        A finite log-odds.

    Examples:
        >>> round(score_boxes([], ClassMap(prior=0.5)), 6)
        0.0
        >>> score_boxes([Box("cone", 0.9, 0, 0, 1, 1)], ClassMap()) > 0
        True
    """
    log_none = math.log1p(-class_map.prior)
    for b in boxes:
        hit = class_map.resolve(b.label)
        if hit is None:
            continue
        p = min(max(hit[1] * b.score, 0.0), 1.0 - 1e-9)
        log_none += math.log1p(-p)
    return logit(-math.expm1(log_none))


def detections_to_output(detections: Iterable[Detection], class_map: ClassMap, *,
                         notes: tuple[str, ...] = ()) -> StageOutput:
    """Map raw detections to evidence classes and score them.

    Args:
        detections: raw boxes with detector labels and confidences in [0, 1].
        class_map: the stage's ``classes`` param.
        notes: extra notes to carry (e.g. the model used).

    Returns:
        log-odds from :func:`score_boxes` over every mapped box, and evidence: mapped boxes
        labelled with their evidence class (best first, at most ``max_boxes``), plus a note that
        counts them per class and names the detector labels that were ignored.
    """
    mapped: list[tuple[Box, str]] = []
    ignored: Counter[str] = Counter()
    for d in detections:
        score = float(min(max(d.score, 0.0), 1.0))
        if score < class_map.min_score:
            continue
        hit = class_map.resolve(d.label)
        if hit is None or hit[1] <= 0.0:
            ignored[d.label] += 1
            continue
        x1, x2 = sorted((float(d.x1), float(d.x2)))
        y1, y2 = sorted((float(d.y1), float(d.y2)))
        mapped.append((Box(hit[0], score, x1, y1, x2, y2), d.label))
    mapped.sort(key=lambda t: -t[0].score)
    boxes = tuple(b for b, _ in mapped)
    z = score_boxes(boxes, class_map)
    extra: list[str] = []
    if mapped:
        per: dict[str, list[float]] = {}
        for b, _ in mapped:
            per.setdefault(b.label, []).append(b.score)
        extra.append("found " + ", ".join(f"{len(v)} {k} (best {max(v):.2f})" for k, v in sorted(per.items())))
        sources = sorted({f"{raw}->{b.label}" for b, raw in mapped if normalise_label(raw) != normalise_label(b.label)})
        if sources:
            extra.append("mapped " + ", ".join(sources))
    if ignored:
        extra.append("ignored boxes labelled " + ", ".join(f"{k!r} (x{n})" for k, n in ignored.most_common(5)))
    return StageOutput(log_odds=z, evidence=Evidence(boxes=boxes[:class_map.max_boxes],
                                                     notes=tuple(notes) + tuple(extra)))


def check_prompts(prompts: dict[str, str], class_map: ClassMap) -> None:
    """Validate an open-vocabulary detector's ``prompts`` (text -> evidence class) against its ``classes``.

    Raises:
        ValueError: a prompt names an unknown evidence class, or is empty (pydantic reports it by key).
    """
    known = class_map.evidence_weights()
    bad = {p: ev for p, ev in prompts.items() if ev not in known}
    if bad:
        raise ValueError(f"prompts: unknown evidence classes {bad}; use one of {', '.join(sorted(known))} "
                         "or declare them under classes.weights")
    if any(not p.strip() for p in prompts):
        raise ValueError("prompts: a prompt must not be empty")


def outputs_in_chunks(batch: Sequence, size: int, detect: Callable[[Sequence], list[list[Detection]]],
                      class_map: ClassMap) -> list[StageOutput]:
    """Run ``detect`` on consecutive chunks of at most ``size`` images and score each image's detections."""
    outputs: list[StageOutput] = []
    for i in range(0, len(batch), size):
        outputs.extend(detections_to_output(d, class_map) for d in detect(batch[i:i + size]))
    return outputs
