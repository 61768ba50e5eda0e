"""Result types shared by stages, the cascade, the CLI and the server.

They validate on construction ("expected X, got Y") so a buggy stage fails loudly where it is
written, not three layers later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = [
    "Box",
    "TextRead",
    "Evidence",
    "StageOutput",
    "StageReport",
    "EarlierReports",
    "Decision",
    "Image",
    "FrameRef",
    "sigmoid",
    "logit",
    "is_road_work",
]


def sigmoid(z: Any) -> Any:
    """Numerically stable logistic function of a float (a float back) or an array (elementwise).

    Examples:
        >>> sigmoid(0.0)
        0.5
        >>> sigmoid(np.array([-40.0, 0.0, 800.0])).round(6).tolist()
        [0.0, 0.5, 1.0]
    """
    if isinstance(z, np.ndarray):
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))
    z = float(z)
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def is_road_work(p: Any) -> Any:
    """The label of a probability (float or array): road work when strictly above one half (the SN72 rule)."""
    return p > 0.5


def logit(p: float, eps: float = 1e-6) -> float:
    """Log-odds of ``p``, clipped to ``[eps, 1 - eps]`` so the result is finite."""
    p = min(max(float(p), eps), 1.0 - eps)
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class FrameRef:
    """Which frame of which stream an image is (a video's frames, as ``workzone batch`` samples them).

    Attributes:
        stream: the video it came from (its path).
        index: the frame's index in the decoded stream.
    """

    stream: str
    index: int


@dataclass(frozen=True)
class Image:
    """A decoded image: RGB uint8 pixels of shape (H, W, 3) plus where it came from.

    Attributes:
        pixels: array of shape (H, W, 3), dtype uint8, RGB.
        source: a label for reports (path, "bytes", "upload:<name>").
        original_size: (width, height) of the input before any downscale on decode.
        frame: the video frame it is, or None for a still image.
    """

    pixels: np.ndarray
    source: str = "<memory>"
    original_size: tuple[int, int] | None = None
    frame: FrameRef | None = None

    def __post_init__(self) -> None:
        px = self.pixels
        if not isinstance(px, np.ndarray) or px.dtype != np.uint8 or px.ndim != 3 or px.shape[2] != 3:
            got = f"{type(px).__name__} {getattr(px, 'dtype', '')} {getattr(px, 'shape', '')}"
            raise ValueError(f"Image.pixels: expected uint8 array of shape (H, W, 3), got {got}")

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass(frozen=True)
class Box:
    """A detection in pixel coordinates of the decoded image (x1, y1, x2, y2)."""

    label: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.score <= 1.0) or not math.isfinite(self.score):
            raise ValueError(f"Box.score: expected a value in [0, 1], got {self.score}")
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError(
                f"Box: expected x1 <= x2 and y1 <= y2, got ({self.x1}, {self.y1}, {self.x2}, {self.y2})"
            )


@dataclass(frozen=True)
class TextRead:
    """Text recognised in the image, and the lexicon entry it matched (if any)."""

    text: str
    score: float
    matched: str | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Evidence:
    """What a stage saw: boxes, text, and free-form notes."""

    boxes: tuple[Box, ...] = ()
    texts: tuple[TextRead, ...] = ()
    notes: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.boxes or self.texts or self.notes)


@dataclass(frozen=True)
class StageOutput:
    """One stage's answer for one image.

    Attributes:
        log_odds: evidence for road work in log-odds; ``None`` means the stage abstains
            (for example OCR that found no sign), which fusion treats as no evidence.
        evidence: what supports the score.
        error_type: set when the stage failed for this image only (the others of its batch were
            answered): the exception class name. The stage abstains for the image and the
            decision is marked degraded, as when the whole stage fails.
    """

    log_odds: float | None
    evidence: Evidence = field(default_factory=Evidence)
    error_type: str | None = None

    def __post_init__(self) -> None:
        if self.log_odds is not None and not math.isfinite(self.log_odds):
            raise ValueError(f"StageOutput.log_odds: expected a finite float or None, got {self.log_odds}")


@dataclass(frozen=True)
class StageReport:
    """How one stage went for one image inside a cascade run."""

    stage: str
    kind: str
    tier: int
    log_odds: float | None
    evidence: Evidence
    latency_ms: float
    error: str | None = None
    error_type: str | None = None  # the exception class name: what responses show instead of ``error``

    @property
    def probability(self) -> float | None:
        return None if self.log_odds is None else sigmoid(self.log_odds)


#: What every stage's ``predict`` is handed as ``evidence``: per image of the batch, the reports of
#: the stages that ran on it before this one, in order (empty for the first tier).
EarlierReports = Sequence[Sequence[StageReport]]


@dataclass(frozen=True)
class Decision:
    """The cascade's answer for one image.

    Attributes:
        probability: calibrated P(road work), finite, in [0, 1].
        label: ``probability > 0.5`` (the SN72 rule: strictly above one half is road work).
        exit_tier: index of the tier after which the image was decided.
        exit_tier_name: that tier's name.
        stages: every stage that ran on the image, in order.
        tier_probabilities: the fused probability after each tier that ran.
        latency_ms: wall time from the start of the run to this image's exit.
        cost: declared cost units (ms of the reference CPU) spent on this image.
        source: where the image came from.
        reason: why it exited ("confident", "last tier", "deadline").
        routes: for each tier with a router, which of its stages ran on the image and why.
        degraded: the answer is less informed than the pipeline intends: no stage ran, a stage
            failed and was skipped, or the deadline skipped tiers.
        degraded_reason: why, naming stages and tiers only (never an internal address or message).
    """

    probability: float
    exit_tier: int
    exit_tier_name: str
    stages: tuple[StageReport, ...]
    tier_probabilities: tuple[float, ...]
    latency_ms: float
    cost: float
    source: str = "<memory>"
    reason: str = "confident"
    routes: tuple[str, ...] = ()
    degraded: bool = False
    degraded_reason: str | None = None

    def __post_init__(self) -> None:
        p = self.probability
        if not (isinstance(p, float) and math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"Decision.probability: expected a finite float in [0, 1], got {p!r}")

    @property
    def label(self) -> bool:
        return bool(is_road_work(self.probability))

    @property
    def errors(self) -> dict[str, str]:
        return {s.stage: s.error for s in self.stages if s.error}
