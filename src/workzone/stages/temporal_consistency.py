"""Temporal consistency for frame sequences: a causal two-state HMM filter over earlier stages' scores.

A work zone lasts seconds, a frame lasts a fraction of one, so a frame's evidence should be read
alongside the frames before it. For frames of one video (images whose ``frame`` names their
video and index, as ``workzone batch`` decodes them) this stage keeps, per video, the forward (filtering) posterior of
the same two-state HMM that :mod:`workzone.video.segments` uses offline, and outputs its log-odds:
one spiky frame in a calm stretch is pulled down, one dip inside a work zone is held up.

Each frame's evidence is an earlier stage's log-odds (``source_stage``), or the mean of the
earlier stages that scored it. The switch probability is a parameter, or (default) estimated
online per video by Laplace's rule of succession over the filter's own decisions, so nothing is
hand-set. Images that are not video frames abstain. The filter only sees the frames that reach
its tier, in the order they arrive: put it in a tier every frame reaches (for example after a tier
whose exit thresholds are disabled) and keep a video's frames in one process (the local engine of
``workzone batch``; Ray actors each see part of a video).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from pydantic import Field

from workzone.stages.base import Stage, StageParams
from workzone.types import EarlierReports, Evidence, Image, StageOutput, StageReport, logit, sigmoid

__all__ = ["TemporalParams", "TemporalConsistencyStage"]

_MAX_LOG_ODDS = 12.0  # keeps the output finite and the filter able to switch after long certainty


class TemporalParams(StageParams):
    source_stage: str | None = Field(default=None, description="earlier stage whose log-odds are filtered "
                                     "(default: mean of the earlier stages that scored the frame)")
    switch_probability: float | None = Field(default=None, gt=0, lt=0.5, description="P(entering or leaving a "
                                             "work zone between two frames); default: estimated online per video")
    prior: float = Field(default=0.5, gt=0, lt=1, description="class prior the followed scores are calibrated to")
    max_streams: int = Field(default=1024, ge=1, description="videos tracked at once (least recent dropped)")


@dataclass
class _Track:
    last_frame: int
    p_zone: float
    frames: int = 1
    switches: int = 0


class TemporalConsistencyStage(Stage):
    """Smooths earlier stages' per-frame evidence along each video with a forward HMM filter."""

    kind = "temporal_consistency"
    tiny_params = {}
    Params = TemporalParams
    default_cost = 0.01

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._tracks: OrderedDict[str, _Track] = OrderedDict()

    async def predict(self, batch: Sequence[Image],
                      evidence: EarlierReports | None = None) -> list[StageOutput]:
        reports = evidence if evidence is not None else [()] * len(batch)
        return [self._step(im, reps) for im, reps in zip(batch, reports)]

    def _evidence(self, reports: Sequence[StageReport]) -> float | None:
        scored = [r.log_odds for r in reports if r.log_odds is not None
                  and (self.params.source_stage is None or r.stage == self.params.source_stage)]
        return sum(scored) / len(scored) if scored else None

    def _step(self, image: Image, reports: Sequence[StageReport]) -> StageOutput:
        if image.frame is None:
            return StageOutput(None, Evidence(notes=("not a video frame: abstains",)))
        stream, frame = image.frame.stream, image.frame.index
        z = self._evidence(reports)
        pi = self.params.prior
        track = self._tracks.get(stream)
        if track is None or frame <= track.last_frame:  # a new video, or one started again
            track = _Track(frame, pi, frames=0)
        switch = self.params.switch_probability or (track.switches + 1) / (track.frames + 2)
        predicted = track.p_zone * (1 - switch) + (1 - track.p_zone) * switch
        if z is not None:  # scaled likelihoods of a calibrated score: p/pi and (1-p)/(1-pi)
            p = sigmoid(z)
            on, off = predicted * p / pi, (1 - predicted) * (1 - p) / (1 - pi)
            predicted = on / (on + off) if on + off > 0 else predicted
        if track.frames and (predicted > 0.5) != (track.p_zone > 0.5):
            track.switches += 1
        track.p_zone, track.last_frame, track.frames = predicted, frame, track.frames + 1
        self._tracks[stream] = track
        self._tracks.move_to_end(stream)
        while len(self._tracks) > self.params.max_streams:
            self._tracks.popitem(last=False)
        out = max(-_MAX_LOG_ODDS, min(_MAX_LOG_ODDS, logit(predicted) - logit(pi)))
        note = f"filtered over {track.frames} frames (switch p {switch:.3f})"
        return StageOutput(out, Evidence(notes=(note,)))
