"""Per-video segment reports from a batch job's rows, and thumbnail strips of their evidence frames."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable


__all__ = ["video_segments", "write_segments", "write_thumbnail_strip", "pipeline_prior"]


def pipeline_prior(tuning: dict[str, Any]) -> float:
    """The class prior a tuned pipeline's probabilities are calibrated to.

    ``workzone tune --balanced`` fits for 50/50; otherwise the tuning set's positive fraction; an
    untuned pipeline is taken as balanced.

    Examples:
        >>> pipeline_prior({"balanced": True, "n": 10, "positives": 2}), pipeline_prior({"n": 10, "positives": 2})
        (0.5, 0.2)
    """
    if tuning.get("balanced") or not tuning.get("n") or not tuning.get("positives"):
        return 0.5
    return float(tuning["positives"]) / float(tuning["n"])


def video_segments(rows: Iterable[dict[str, Any]], *, prior: float = 0.5) -> list[dict[str, Any]]:
    """Group frame rows by video, fit the HMM per video and list its work-zone segments.

    Frames whose row is an error are left out (they carry no probability).
    """
    from workzone.video.segments import find_segments

    frames: dict[str, list[tuple[float, int, float]]] = defaultdict(list)
    for r in rows:
        if r.get("frame_index") is not None and r.get("probability") is not None:
            frames[r["path"]].append((float(r["timestamp_s"]), int(r["frame_index"]), float(r["probability"])))
    out = []
    for path in sorted(frames):
        seq = sorted(frames[path])
        ts, idx, ps = zip(*seq)
        segments, params = find_segments(ts, idx, ps, prior=prior)
        out.append({"path": path, "sampled_frames": len(seq), "duration_s": ts[-1] - ts[0],
                    "hmm": asdict(params), "segments": [asdict(s) for s in segments]})
    return out


def write_segments(videos: list[dict[str, Any]], path: Path) -> None:
    """Write the segments report as JSON (atomically)."""
    from workzone.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps({"videos": videos}, indent=2))


def write_thumbnail_strip(video: str | Path, frame_indices: list[int], out: Path, *, height: int = 120) -> Path:
    """A PNG strip of the given frames of ``video``, side by side, ``height`` pixels tall."""
    from PIL import Image as PILImage

    from workzone.video.frames import read_frames_at

    frames = read_frames_at(video, set(frame_indices))
    tiles = []
    for i in frame_indices:
        if i in frames:
            im = PILImage.fromarray(frames[i])
            tiles.append(im.resize((max(1, round(im.width * height / im.height)), height)))
    if not tiles:
        raise ValueError(f"{video}: none of the frames {frame_indices} could be read")
    strip = PILImage.new("RGB", (sum(t.width for t in tiles), height))
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width
    out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(out)
    return out
