"""Test videos built at test time from real frames of ../shared/data (never committed).

A road-work clip is CamVid street frames (no road work, dev split), then a stretch of one US
work-zone clip (WMaia9 ``san_francisco.mp4``, dev split, every listed frame labelled road work),
then CamVid frames again; a clip without road work is CamVid frames only. One source frame per
video frame, so at the sampling rate of the clip, sample k is source frame k.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

SIZE = (480, 272)  # even sides for yuv420p; both sources are squashed to it


def _rows(data: Path) -> list[dict[str, str]]:
    with (data / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def camvid_frames(data: Path, n: int, offset: int = 0) -> list[Path]:
    """``n`` consecutive dev frames of CamVid sequence seq05vd (label 0)."""
    rows = sorted((r for r in _rows(data) if r["source"] == "CamVid" and r["split"] == "dev"
                   and "seq05vd" in r["path"] and r["label"] == "0"), key=lambda r: r["path"])
    return [data / r["path"] for r in rows[offset:offset + n]]


def work_zone_frames(data: Path, n: int) -> list[Path]:
    """``n`` consecutive road-work frames (label 1) of the WMaia9 San Francisco clip, by frame index."""
    rows = sorted((r for r in _rows(data) if r["source"] == "WMaia9-workzone" and r["label"] == "1"
                   and r["origin_path"].endswith("san_francisco.mp4")), key=lambda r: int(r["frame_index"]))
    return [data / r["path"] for r in rows[:n]]


def write_clip(out: Path, frames: list[Path], fps: int = 2) -> Path:
    """Encode ``frames`` (image files) into an MPEG-4 video at ``fps``, one frame each."""
    import av

    with av.open(str(out), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 2_000_000
        for f in frames:
            px = np.asarray(PILImage.open(f).convert("RGB").resize(SIZE))
            for packet in stream.encode(av.VideoFrame.from_ndarray(px, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def write_counter_video(path: Path, n: int, rate: int, size: tuple[int, int] = (64, 48)) -> Path:
    """``n`` synthetic frames at ``rate`` fps; frame k is uniformly grey level 8*k (frames are identifiable)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for k in range(n):
            px = np.full((size[1], size[0], 3), min(8 * k, 255), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(px, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
