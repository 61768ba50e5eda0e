"""Frame sampling with PyAV on synthetic videos written at test time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.video._clips import write_counter_video
from workzone.errors import InvalidImageError
from workzone.video.frames import iter_video_frames, read_frames_at

av = pytest.importorskip("av")


@pytest.mark.parametrize(("rate", "fps", "expected"), [
    (10, 2.0, [0, 5, 10, 15, 20, 25]),
    (10, 10.0, list(range(30))),
    (10, None, list(range(30))),
    (10, 3.0, [0, 4, 7, 10, 14, 17, 20, 24, 27]),  # sampling instants k/3 s, first frame at or after each
    (10, 50.0, list(range(30))),  # never more frames than the source has
])
def test_sampling_picks_the_first_frame_at_each_instant(tmp_path, rate, fps, expected) -> None:
    video = write_counter_video(tmp_path / "c.mp4", 30, rate)
    frames = list(iter_video_frames(video, fps))
    assert [f.frame_index for f in frames] == expected
    assert [f.timestamp_s for f in frames] == pytest.approx([i / rate for i in expected])
    assert frames[0].pixels.shape == (48, 64, 3) and frames[0].pixels.dtype == np.uint8


def test_skip_leaves_out_done_frames_but_keeps_the_sampling_grid(tmp_path) -> None:
    video = write_counter_video(tmp_path / "c.mp4", 30, 10)
    assert [f.frame_index for f in iter_video_frames(video, 2.0, skip={5, 15})] == [0, 10, 20, 25]


def test_max_side_downscales(tmp_path) -> None:
    video = write_counter_video(tmp_path / "c.mp4", 3, 10)
    assert next(iter(iter_video_frames(video, None, max_side=32))).pixels.shape == (24, 32, 3)


def test_read_frames_at_returns_the_pixels_of_those_frames(tmp_path) -> None:
    video = write_counter_video(tmp_path / "c.mp4", 30, 10)
    got = read_frames_at(video, {3, 20})
    assert sorted(got) == [3, 20]
    assert abs(int(got[20].mean()) - 160) <= 6 and abs(int(got[3].mean()) - 24) <= 6


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_unreadable_file_raises_invalid_image_error(tmp_path, content) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(InvalidImageError, match="bad.mp4"):
        list(iter_video_frames(bad, 2.0))


def test_fps_must_be_positive(tmp_path) -> None:
    video = write_counter_video(tmp_path / "c.mp4", 3, 10)
    with pytest.raises(ValueError, match="positive"):
        list(iter_video_frames(video, 0.0))
