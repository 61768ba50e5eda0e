"""Manifest rows -> training samples, label fixes, a compact copy for the GPU, and cone boxes.

The roadwork-v1 classes come mostly from different sources (positives: stock cone photos and US
dashcam work zones; negatives: scenic stock roads and UK dashcam), so everything here keeps the
``source`` of each sample: sampling is balanced over (source, label) groups and evaluation is
reported per source.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image as PILImage

from workzone.io.atomic import PARTIAL_SUFFIX, atomic_path, atomic_write_bytes, is_complete_jpeg
from workzone.io.sources import read_manifest

__all__ = [
    "Sample",
    "ConeBox",
    "LABEL_FIXES",
    "load_samples",
    "read_boxes",
    "load_pixels",
    "is_low_light",
    "make_compact_copy",
    "save_downscaled_jpeg",
]

# Decisions on the rows that SOURCES.md flags with ``REVIEW:``; None drops the row. Why each:
# a cone product shot labelled 0 contradicts its own source's cone=1 rule; rollers paving a road
# are road work; a parked roller or a paving edge is ambiguous either way, so it teaches nothing;
# cones at a petrol station are not road work but are exactly what the cone shortcut fires on, and
# one image cannot teach that distinction, so it is dropped rather than trusted.
LABEL_FIXES: dict[str, int | None] = {
    "images/99succubus/road_cone_084.jpg": 1,
    "images/tracon/imh_215_00000000.jpg": 1,
    "images/tracon/imh_116_00000000.jpg": None,
    "images/tracon/imh_293_00000000.jpg": None,
    "images/camvid/0006r0_f02010.jpg": None,
}


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        path: absolute image path.
        rel: path relative to the manifest folder (the key used by boxes.csv and LABEL_FIXES).
        label: 1 road work, 0 none.
        source: the manifest's source name.
        split: train, dev or extra-train.
        notes: the manifest's notes (used for the night/dusk split).
        condition: the manifest's ``condition`` column (day / night / dusk / rain / fog), "" when absent.
    """

    path: Path
    rel: str
    label: int
    source: str
    split: str
    notes: str = ""
    condition: str = ""


@dataclass(frozen=True)
class ConeBox:
    """A cone box in normalised YOLO coordinates (centre x/y, width, height in [0, 1])."""

    rel: str
    cx: float
    cy: float
    w: float
    h: float


def load_samples(
    manifest: str | Path,
    *,
    splits: Iterable[str] | None = None,
    exclude_sources: Iterable[str] = (),
    apply_fixes: bool = True,
) -> list[Sample]:
    """Read the manifest into samples, applying :data:`LABEL_FIXES`.

    Args:
        manifest: the roadwork-v1 ``manifest.csv`` (or a compact copy of it).
        splits: keep only these splits (None keeps all).
        exclude_sources: sources to leave out (leave-one-source-out training).
        apply_fixes: relabel or drop the reviewed rows.

    Returns:
        Samples in manifest order.
    """
    manifest = Path(manifest)
    excluded = set(exclude_sources)
    out: list[Sample] = []
    for row in read_manifest(manifest, splits=splits):
        if row.source in excluded:
            continue
        rel = row.path.relative_to(manifest.parent).as_posix()
        label = row.label
        if apply_fixes and rel in LABEL_FIXES:
            fixed = LABEL_FIXES[rel]
            if fixed is None:
                continue
            label = fixed
        out.append(Sample(row.path, rel, label, row.source, row.split, row.extra.get("notes", ""),
                          row.extra.get("condition", "")))
    return out


def read_boxes(boxes_csv: str | Path, *, min_side: float = 0.0) -> dict[str, list[ConeBox]]:
    """Read ``boxes.csv`` grouped by image.

    Args:
        boxes_csv: file with columns ``path,class,cx,cy,w,h``.
        min_side: drop boxes whose normalised height is below this.

    Returns:
        rel path -> boxes of that image.
    """
    grouped: dict[str, list[ConeBox]] = defaultdict(list)
    with Path(boxes_csv).open(newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            box = ConeBox(rec["path"], float(rec["cx"]), float(rec["cy"]), float(rec["w"]), float(rec["h"]))
            if box.h >= min_side:
                grouped[box.rel].append(box)
    return dict(grouped)


def load_pixels(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3)."""
    with PILImage.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def is_low_light(sample: Sample, pixels: np.ndarray | None = None, threshold: float = 0.28) -> bool:
    """Whether an image is night / dusk: from the manifest notes, else from mean luminance.

    The notes only cover the sources that were checked by eye (CamVid dusk sequence, 99succubus),
    so the luminance test (mean of the grey image in [0, 1] below ``threshold``) covers the rest.
    """
    notes = sample.notes.lower()
    if "night" in notes or "dusk" in notes:
        return True
    if pixels is None:
        return False
    grey = pixels.astype(np.float32).mean() / 255.0
    return bool(grey < threshold)


def make_compact_copy(manifest: str | Path, out_dir: str | Path, *, max_side: int = 320, quality: int = 88) -> Path:
    """Write a downscaled copy of the data set (images, manifest.csv, boxes.csv) to ``out_dir``.

    The copy travels to the GPU machine, whose whole payload is capped at 64 MiB; boxes stay valid
    because they are normalised and the aspect ratio is kept.

    Args:
        manifest: the original manifest.
        out_dir: destination folder (created; keep it git-ignored, the images must never be committed).
        max_side: longest side after downscaling (never upscaled).
        quality: JPEG quality.

    Returns:
        The path of the copied manifest.
    """
    manifest = Path(manifest)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.rglob(f"*{PARTIAL_SUFFIX}"):  # left by a writer killed mid-file
        stale.unlink()
    for row in read_manifest(manifest):
        rel = row.path.relative_to(manifest.parent)
        save_downscaled_jpeg(row.path, out_dir / rel, max_side=max_side, quality=quality)
    atomic_write_bytes(out_dir / "manifest.csv", manifest.read_bytes())
    boxes = manifest.parent / "boxes.csv"
    if boxes.exists():
        atomic_write_bytes(out_dir / "boxes.csv", boxes.read_bytes())
    return out_dir / "manifest.csv"


def save_downscaled_jpeg(src: str | Path, dst: str | Path, *, max_side: int, quality: int) -> bool:
    """Write ``src`` downscaled to ``max_side`` as a JPEG at ``dst``, atomically; skip a complete one.

    A rerun after ``kill -9`` finds every file whole or absent (a ``.partial`` temporary at worst)
    and redoes only what is missing.

    Returns:
        True when the file was written, False when a complete one was already there.
    """
    if is_complete_jpeg(dst):
        return False
    with PILImage.open(src) as im, atomic_path(dst) as tmp:
        im = im.convert("RGB")
        if max(im.size) > max_side:
            scale = max_side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), PILImage.LANCZOS)
        im.save(tmp, "JPEG", quality=quality)
    return True


def with_label(sample: Sample, label: int) -> Sample:
    """A copy of ``sample`` with another label."""
    return replace(sample, label=label)
