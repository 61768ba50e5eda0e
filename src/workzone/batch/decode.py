"""Turn a work item into decoded units (one per image or sampled video frame), skipping done keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Container, Iterator

from workzone.batch.inputs import WorkItem, row_key
from workzone.errors import InvalidImageError
from workzone.service import ImageDecoder
from workzone.types import FrameRef, Image

__all__ = ["Unit", "iter_units"]


@dataclass(frozen=True)
class Unit:
    """One image or frame ready for the cascade, or the error that stopped it.

    Attributes:
        item_index: position of its work item in the job.
        key: row key (file identity + frame index).
        path: the input file.
        frame_index, timestamp_s: where in the video (None for still images).
        image: the decoded pixels (None when ``error`` is set).
        error: why the input could not be decoded.
    """

    item_index: int
    key: str
    path: str
    frame_index: int | None
    timestamp_s: float | None
    image: Image | None = None
    error: str | None = None


class _DoneFrames:
    """``frame_index in done_frames``: has this video frame's row been committed already?"""

    def __init__(self, file_id: str, done: Container[str]) -> None:
        self.file_id, self.done = file_id, done

    def __contains__(self, frame_index: object) -> bool:
        return row_key(self.file_id, frame_index) in self.done  # type: ignore[arg-type]


def iter_units(item_index: int, item: WorkItem, *, fps: float | None, done: Container[str],
               decoder: ImageDecoder | None = None) -> Iterator[Unit]:
    """Decode ``item``: one unit for an image, one per sampled frame for a video.

    Images go through ``decoder``, the detection service's decode policy (default: the CPU one);
    video frames are sampled by PyAV within its limits.

    Keys already in ``done`` are not decoded. A file that cannot be read gives one unit carrying
    the error (for a video that fails part-way: the frames before the failure, then the error).
    """
    decoder = decoder or ImageDecoder()
    limits = decoder.limits
    path = str(item.path)
    if item.kind == "image":
        key = row_key(item.file_id, None)
        if key in done:
            return
        try:
            image = decoder.decode([item.path])[0]
        except (InvalidImageError, OSError) as exc:
            yield Unit(item_index, key, path, None, None, error=str(exc))
            return
        yield Unit(item_index, key, path, None, None, image=image)
        return
    from workzone.video.frames import iter_video_frames

    error_key = row_key(item.file_id, None)
    if error_key in done:  # the error row is written after every frame before the failure
        return
    try:
        for f in iter_video_frames(item.path, fps, max_side=limits.max_side, skip=_DoneFrames(item.file_id, done)):
            image = Image(f.pixels, source=f"{path}#frame={f.frame_index}", frame=FrameRef(path, f.frame_index),
                          original_size=(f.pixels.shape[1], f.pixels.shape[0]))
            yield Unit(item_index, row_key(item.file_id, f.frame_index), path, f.frame_index, f.timestamp_s, image=image)
    except (InvalidImageError, OSError) as exc:
        yield Unit(item_index, error_key, path, None, None, error=str(exc))
