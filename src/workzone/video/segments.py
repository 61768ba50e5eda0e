"""Work-zone segments from per-frame probabilities: a two-state hidden Markov model.

The hidden state of each sampled frame is "in a work zone" or not. The cascade's probabilities are
calibrated to a known class prior ``prior`` (0.5 for pipelines tuned with ``--balanced``), so each
frame's *scaled likelihoods* are ``p / prior`` (work zone) and ``(1 - p) / (1 - prior)`` (not): the
hybrid HMM/classifier construction of speech recognition. Nothing about the emissions is chosen by
hand.

The two transition probabilities (enter a zone, leave it) and the initial state are **fitted per
video by expectation-maximisation** (Baum-Welch with the emissions held fixed), with one
pseudo-count per transition (Laplace's rule of succession) so a clip with no switch gets a small,
non-zero switch probability rather than zero. Viterbi then gives the most likely state path, and
each run of work-zone states is a segment. Isolated confident frames do not make a segment when
the fitted switch rate says switching twice costs more than their evidence; a sustained stretch
does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["HmmParams", "Segment", "fit_hmm", "viterbi_states", "find_segments"]

_EPS = 1e-6  # keeps logs finite for probabilities of exactly 0 or 1


@dataclass(frozen=True)
class HmmParams:
    """Transition model of the two-state HMM.

    Attributes:
        p_enter: P(work zone at t+1 | none at t).
        p_leave: P(none at t+1 | work zone at t).
        p_start: P(work zone at the first frame).
        prior: the class prior the frame probabilities are calibrated to.
        iterations: EM iterations run to fit them.
    """

    p_enter: float
    p_leave: float
    p_start: float
    prior: float = 0.5
    iterations: int = 0

    def __post_init__(self) -> None:
        for name in ("p_enter", "p_leave", "p_start", "prior"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"HmmParams.{name}: expected a value in (0, 1), got {v}")


@dataclass(frozen=True)
class Segment:
    """One work-zone stretch of a video.

    Attributes:
        start_s, end_s: timestamps of the first and last sampled frame in the segment (seconds).
        start_frame, end_frame: their frame indices.
        n_frames: sampled frames in the segment.
        peak_probability: highest frame probability inside it.
        mean_probability: mean frame probability inside it.
        evidence_frames: frame indices with the most evidence (highest probability first).
    """

    start_s: float
    end_s: float
    start_frame: int
    end_frame: int
    n_frames: int
    peak_probability: float
    mean_probability: float
    evidence_frames: tuple[int, ...] = field(default=())


def _log_emissions(probs: np.ndarray, prior: float) -> np.ndarray:
    p = np.clip(probs, _EPS, 1 - _EPS)
    return np.stack([np.log1p(-p) - math.log1p(-prior), np.log(p) - math.log(prior)], axis=1)  # (T, 2)


def _log_transitions(params: HmmParams) -> np.ndarray:
    a = np.array([[1 - params.p_enter, params.p_enter], [params.p_leave, 1 - params.p_leave]])
    return np.log(a)


def fit_hmm(probs: Sequence[float], *, prior: float = 0.5, max_iter: int = 50, tol: float = 1e-6) -> HmmParams:
    """Fit the transition and start probabilities to one sequence by EM (emissions fixed).

    Args:
        probs: per-frame P(work zone), in time order, shape (T,).
        prior: class prior the probabilities are calibrated to.
        max_iter: EM iterations at most.
        tol: stop when the log-likelihood improves by less than this.

    Examples:
        >>> p = fit_hmm([0.02] * 20 + [0.97] * 10 + [0.03] * 20)
        >>> round(p.p_enter, 3), round(p.p_leave, 2)
        (0.049, 0.17)
    """
    x = np.asarray(probs, dtype=float)
    t_len = len(x)
    if t_len == 0:
        return HmmParams(0.5, 0.5, 0.5, prior)
    log_e = _log_emissions(x, prior)
    # Start from "one switch per sequence": the least committal guess the data can then move.
    params = HmmParams(1.0 / (t_len + 1), 1.0 / (t_len + 1), 0.5, prior)
    last_ll = -math.inf
    it = 0
    for it in range(1, max_iter + 1):
        log_a = _log_transitions(params)
        log_alpha, ll = _forward(log_e, log_a, params.p_start)
        log_beta = _backward(log_e, log_a)
        gamma = np.exp(log_alpha + log_beta - ll)  # (T, 2) state posteriors
        if t_len > 1:
            xi = (log_alpha[:-1, :, None] + log_a[None] + log_e[1:, None, :] + log_beta[1:, None, :]) - ll
            counts = np.exp(xi).sum(axis=0)  # (2, 2) expected transitions
        else:
            counts = np.zeros((2, 2))
        # Laplace pseudo-counts: one observed stay and one switch from each state.
        p_enter = (counts[0, 1] + 1) / (counts[0].sum() + 2)
        p_leave = (counts[1, 0] + 1) / (counts[1].sum() + 2)
        p_start = float(np.clip(gamma[0, 1], _EPS, 1 - _EPS))
        params = HmmParams(float(p_enter), float(p_leave), p_start, prior, it)
        if ll - last_ll < tol:
            break
        last_ll = ll
    return params


def _forward(log_e: np.ndarray, log_a: np.ndarray, p_start: float) -> tuple[np.ndarray, float]:
    t_len = len(log_e)
    out = np.empty((t_len, 2))
    out[0] = np.log([1 - p_start, p_start]) + log_e[0]
    for t in range(1, t_len):
        out[t] = np.logaddexp.reduce(out[t - 1][:, None] + log_a, axis=0) + log_e[t]
    return out, float(np.logaddexp.reduce(out[-1]))


def _backward(log_e: np.ndarray, log_a: np.ndarray) -> np.ndarray:
    t_len = len(log_e)
    out = np.zeros((t_len, 2))
    for t in range(t_len - 2, -1, -1):
        out[t] = np.logaddexp.reduce(log_a + (log_e[t + 1] + out[t + 1])[None, :], axis=1)
    return out


def viterbi_states(probs: Sequence[float], params: HmmParams) -> np.ndarray:
    """Most likely state path, shape (T,), True where the frame is in a work zone."""
    x = np.asarray(probs, dtype=float)
    if len(x) == 0:
        return np.zeros(0, dtype=bool)
    log_e = _log_emissions(x, params.prior)
    log_a = _log_transitions(params)
    score = np.log([1 - params.p_start, params.p_start]) + log_e[0]
    back = np.zeros((len(x), 2), dtype=np.int8)
    for t in range(1, len(x)):
        cand = score[:, None] + log_a  # (from, to)
        back[t] = np.argmax(cand, axis=0)
        score = cand[back[t], [0, 1]] + log_e[t]
    states = np.zeros(len(x), dtype=bool)
    s = int(np.argmax(score))
    for t in range(len(x) - 1, -1, -1):
        states[t] = bool(s)
        s = int(back[t, s])
    return states


def find_segments(timestamps: Sequence[float], frame_indices: Sequence[int], probs: Sequence[float], *,
                  params: HmmParams | None = None, prior: float = 0.5, top_k: int = 3) -> tuple[list[Segment], HmmParams]:
    """Segments of one video from its sampled frames (sorted by time).

    Args:
        timestamps: seconds, shape (T,).
        frame_indices: frame index of each sample, shape (T,).
        probs: P(work zone) of each sample, shape (T,).
        params: transition model; fitted to these frames by :func:`fit_hmm` when None.
        prior: class prior of ``probs`` (used when fitting).
        top_k: how many evidence frames to name per segment.

    Returns:
        The segments in time order, and the parameters used.
    """
    if not len(timestamps) == len(frame_indices) == len(probs):
        raise ValueError(f"expected sequences of one length, got {len(timestamps)}, {len(frame_indices)}, {len(probs)}")
    params = params or fit_hmm(probs, prior=prior)
    states = viterbi_states(probs, params)
    segments: list[Segment] = []
    t = 0
    while t < len(states):
        if not states[t]:
            t += 1
            continue
        end = t
        while end + 1 < len(states) and states[end + 1]:
            end += 1
        p = np.asarray(probs[t:end + 1], dtype=float)
        order = np.argsort(-p, kind="stable")[:top_k]
        segments.append(Segment(
            start_s=float(timestamps[t]), end_s=float(timestamps[end]),
            start_frame=int(frame_indices[t]), end_frame=int(frame_indices[end]),
            n_frames=end - t + 1, peak_probability=float(p.max()), mean_probability=float(p.mean()),
            evidence_frames=tuple(int(frame_indices[t + i]) for i in order),
        ))
        t = end + 1
    return segments, params
