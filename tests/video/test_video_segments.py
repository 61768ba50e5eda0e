"""Acceptance: a video built from real frames with a road-work stretch in the middle gives one
segment within two sampled frames of the truth; a clip without road work gives none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.video._clips import camvid_frames, work_zone_frames, write_clip
from workzone.batch import BatchOptions, read_results, run_batch_job

pytest.importorskip("av")

FPS = 2  # the clips are written and sampled at 2 frames per second: sample k is clip frame k
BEFORE, STRETCH, AFTER = 12, 12, 12


@pytest.fixture(scope="module")
def clips(tmp_path_factory, request) -> tuple[Path, Path]:
    data = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "roadwork-v1"
    if not (data / "manifest.csv").is_file():
        pytest.skip("../shared/data/roadwork-v1 is not beside the repository")
    root = tmp_path_factory.mktemp("video")
    frames = camvid_frames(data, BEFORE) + work_zone_frames(data, STRETCH) + camvid_frames(data, AFTER, offset=40)
    assert len(frames) == BEFORE + STRETCH + AFTER
    road_work = write_clip(root / "with_road_work.mp4", frames, fps=FPS)
    plain = write_clip(root / "no_road_work.mp4", camvid_frames(data, 30, offset=80), fps=FPS)
    return road_work, plain


@pytest.fixture(scope="module")
def result(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("video_out") / "frames.parquet"
    pytest.importorskip("pyarrow")
    summary = run_batch_job([str(c) for c in clips], [out], options=BatchOptions(fps=FPS, thumbnails=out.parent / "strips"))
    return summary, json.loads(summary.segments_file.read_text())


def _video(report: dict, name: str) -> dict:
    return next(v for v in report["videos"] if Path(v["path"]).name == name)


def test_one_segment_within_two_sampled_frames_of_the_truth(result) -> None:
    summary, report = result
    video = _video(report, "with_road_work.mp4")
    assert video["sampled_frames"] == BEFORE + STRETCH + AFTER
    [segment] = video["segments"]
    true_start_s, true_end_s = BEFORE / FPS, (BEFORE + STRETCH - 1) / FPS
    assert abs(segment["start_s"] - true_start_s) <= 2 / FPS
    assert abs(segment["end_s"] - true_end_s) <= 2 / FPS
    assert BEFORE <= min(segment["evidence_frames"]) and max(segment["evidence_frames"]) < BEFORE + STRETCH
    assert segment["peak_probability"] > 0.5
    assert Path(segment["thumbnail_strip"]).is_file()


def test_clip_without_road_work_has_no_segment(result) -> None:
    _, report = result
    assert _video(report, "no_road_work.mp4")["segments"] == []


def test_one_row_per_sampled_frame_with_time(result) -> None:
    summary, _ = result
    rows = read_results(summary.outputs[0])
    assert summary.errors == 0 and len(rows) == BEFORE + STRETCH + AFTER + 30
    frames = [r for r in rows if r["path"].endswith("with_road_work.mp4")]
    assert [r["frame_index"] for r in frames] == list(range(BEFORE + STRETCH + AFTER))
    assert [r["timestamp_s"] for r in frames] == pytest.approx([k / FPS for k in range(len(frames))])
