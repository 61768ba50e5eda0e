"""The two-state HMM: EM-fitted transitions, Viterbi paths, segments."""

from __future__ import annotations

import numpy as np
import pytest

from workzone.video.segments import HmmParams, find_segments, fit_hmm, viterbi_states


def _segments(probs):
    n = len(probs)
    segs, params = find_segments([k * 0.5 for k in range(n)], list(range(0, 5 * n, 5)), probs)
    return [(s.start_frame, s.end_frame) for s in segs], params


@pytest.mark.parametrize(("probs", "expected"), [
    ([0.03] * 40, []),
    ([0.97] * 20, [(0, 95)]),
    ([0.02] * 15 + [0.96] * 10 + [0.03] * 15, [(75, 120)]),
    # a noisy stretch: dips inside the zone do not split it, lone spikes outside do not make one
    ([0.05] * 10 + [0.2] + [0.05] * 9 + [0.9, 0.35, 0.8, 0.95, 0.4, 0.9, 0.99, 0.8] + [0.04] * 12, [(100, 135)]),
    ([0.02] * 10 + [0.95] * 6 + [0.03] * 10 + [0.97] * 6 + [0.02] * 10, [(50, 75), (130, 155)]),
])
def test_segments_follow_sustained_evidence(probs, expected) -> None:
    assert _segments(probs)[0] == expected


def test_a_single_confident_frame_in_a_long_clean_clip_is_not_a_segment() -> None:
    probs = [0.03] * 60
    probs[30] = 0.9
    assert _segments(probs)[0] == []


def test_em_fits_switch_rates_from_the_data() -> None:
    calm = fit_hmm([0.02] * 50)
    busy = fit_hmm(([0.02] * 5 + [0.97] * 5) * 5)
    assert calm.p_enter < 0.05  # no switch seen: only the pseudo-count remains
    assert busy.p_enter > 4 * calm.p_enter and busy.p_leave > 0.1
    assert busy.iterations >= 1


def test_segment_fields() -> None:
    probs = [0.02] * 4 + [0.8, 0.99, 0.9] + [0.02] * 4
    segs, _ = find_segments([k / 2 for k in range(11)], list(range(11)), probs, top_k=2)
    [s] = segs
    assert (s.start_s, s.end_s, s.n_frames) == (2.0, 3.0, 3)
    assert s.peak_probability == 0.99 and s.mean_probability == pytest.approx((0.8 + 0.99 + 0.9) / 3)
    assert s.evidence_frames == (5, 6)


def test_viterbi_with_given_params_and_prior() -> None:
    params = HmmParams(p_enter=0.01, p_leave=0.01, p_start=0.5, prior=0.2)
    # p = 0.3 is above the prior 0.2, so it is evidence *for* a work zone under this calibration
    assert viterbi_states([0.3] * 10, params).all()
    assert not viterbi_states([0.3] * 10, HmmParams(0.01, 0.01, 0.5, prior=0.5)).any()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"p_enter": 0.0, "p_leave": 0.1, "p_start": 0.5}, "p_enter"),
    ({"p_enter": 0.1, "p_leave": 1.0, "p_start": 0.5}, "p_leave"),
    ({"p_enter": 0.1, "p_leave": 0.1, "p_start": 0.5, "prior": 0.0}, "prior"),
])
def test_params_are_validated(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        HmmParams(**kwargs)


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="one length"):
        find_segments([0.0, 1.0], [0], [0.5, 0.5])


def test_empty_sequence_has_no_segments() -> None:
    assert _segments([])[0] == [] and len(viterbi_states(np.array([]), HmmParams(0.1, 0.1, 0.5))) == 0
