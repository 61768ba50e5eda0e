"""Decode a video into frames sampled at a chosen rate (PyAV, extra ``video``).

A frame is kept when its presentation time reaches the next sampling instant ``k / fps``, so the
sampled rate never exceeds the source rate and variable-frame-rate files are handled by their
timestamps, not by counting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from workzone.errors import InvalidImageError

__all__ = ["VideoFrame", "iter_video_frames", "read_frames_at"]


@dataclass(frozen=True)
class VideoFrame:
    """One sampled frame.

    Attributes:
        frame_index: index of the frame in the decoded stream (0-based, source frame rate).
        timestamp_s: presentation time in seconds from the start of the stream.
        pixels: RGB uint8 array of shape (H, W, 3).
    """

    frame_index: int
    timestamp_s: float
    pixels: np.ndarray


def iter_video_frames(path: str | Path, fps: float | None = None, *, max_side: int = 0,
                      skip: frozenset[int] = frozenset()) -> Iterator[VideoFrame]:
    """Yield frames of the first video stream of ``path``, sampled at ``fps`` (None: every frame).

    Args:
        path: a video file PyAV/FFmpeg can read.
        fps: sampling rate in frames per second.
        max_side: downscale frames whose longer side exceeds this (0: never).
        skip: frame indices to leave out (already done); they still advance the sampling clock, and
            their pixels are never converted.

    Raises:
        InvalidImageError: the file cannot be opened or decoding fails part-way (frames before the
            failure have been yielded).
        MissingExtraError: PyAV is not installed.
    """
    from workzone._optional import require

    av = require("av", "video", "reading video")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps: expected a positive rate, got {fps}")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise InvalidImageError(f"{path}: cannot open as video ({exc})") from exc
    with container:
        if not container.streams.video:
            raise InvalidImageError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_t = 0.0
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                t = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 30)
                if fps is not None:
                    if t + 1e-6 < next_t:
                        continue
                    next_t = max(next_t + 1.0 / fps, t + 0.5 / fps)  # resync after a gap in the stream
                if index in skip:
                    continue
                yield VideoFrame(index, t, _to_rgb(frame, max_side))
        except av.FFmpegError as exc:
            raise InvalidImageError(f"{path}: decoding failed after frame {index} ({exc})") from exc


def read_frames_at(path: str | Path, frame_indices: set[int], *, max_side: int = 0) -> dict[int, np.ndarray]:
    """Pixels of the given frame indices (one sequential pass; used for thumbnail strips)."""
    out: dict[int, np.ndarray] = {}
    if not frame_indices:
        return out
    last = max(frame_indices)
    for f in iter_video_frames(path, None, max_side=max_side):
        if f.frame_index in frame_indices:
            out[f.frame_index] = f.pixels
        if f.frame_index >= last:
            break
    return out


def _to_rgb(frame, max_side: int) -> np.ndarray:
    w, h = frame.width, frame.height
    if max_side and max(w, h) > max_side:
        scale = max_side / max(w, h)
        return frame.to_ndarray(format="rgb24", width=max(1, round(w * scale)), height=max(1, round(h * scale)))
    return frame.to_ndarray(format="rgb24")
