"""Worker and machine cut-outs from the boxed site photos, to paste into road scenes at dashcam scale.

Why: the detector learnt ``worker`` and ``machine`` only from close-up site photos (objects-v1: the
Construction Site Safety set, 640x640 stretched, and excavator photos), never standing on a road in a
dashcam frame; on US dashcam work zones (WMaia9, a left-out source) its out-of-fold detections held no
worker or machine box >= 0.3 on any of the 260 road-work images. Cones, drums and signs transfer because
:mod:`workzone_train.scene_synth` pastes them into road scenes; this module gives workers and machines the
same treatment.

Cutting needs OpenCV (GrabCut initialised with the box) and runs once, on the CPU, at the photos' full
resolution: :func:`write_site_cutouts` stores the RGBA cut-outs (WebP with alpha, a few KB each) and a
``cutouts.csv`` inside the compact corpus, and training reads them with Pillow alone
(:func:`load_site_cutouts`), so the GPU machine needs no OpenCV and never cuts from the 256-px copies.

Workers: the photos' ``worker`` is any person (the source's "Person"), and on dashcam scenes pedestrians are
everywhere and are not road work. A cut-out becomes a worker only when its torso shows a clear share of
high-visibility pixels (:func:`hivis_share`, :data:`HIVIS_MIN_SHARE`); the people of the negative scenes
stay unlabelled, i.e. background.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image as PILImage

from workzone.errors import DataError
from workzone_train._deps import require

__all__ = ["SiteCutout", "HIVIS_MIN_SHARE", "hivis_mask", "hivis_share", "cut_site_object", "write_site_cutouts",
           "load_site_cutouts", "CUTOUT_DIR"]

# Folder (inside objects-v1 of a corpus) holding the cut-outs and their cutouts.csv.
CUTOUT_DIR = "cutouts"
# Longest side a cut-out is stored at: pasted objects are at most ~0.6 of a 320-px scene tall, so more
# resolution is never seen by the compact-corpus training.
_STORE_SIDE = 192
# Smallest usable source box, in source pixels (height for a worker, the shorter side for a machine):
# below this the mask is mostly edge and the cut-out a blur.
_MIN_PX = {"worker": 64, "machine": 64}
# A box within this many pixels of the image edge is cut off by the frame: pasting it would teach half objects.
_BORDER_PX = 2

# High-visibility colours (ANSI/ISEA 107, EN ISO 20471 backgrounds): fluorescent yellow-green and fluorescent
# orange-red, as hue ranges in degrees with floors on saturation and value (0..1). Yellow-green starts at 50°
# (a yellow hard hat sits at 45-52° and is mostly excluded by looking at the torso only, see hivis_share);
# orange stops at 40° and needs a high saturation, so skin (hue 10-30°, saturation 0.2-0.6) does not count.
HIVIS_HUES: tuple[tuple[float, float, float, float], ...] = (
    # (hue from, hue to, min saturation, min value)
    (50.0, 95.0, 0.45, 0.50),   # fluorescent yellow-green (pale in JPEG and shade: saturation from 0.45)
    (8.0, 40.0, 0.68, 0.55),    # fluorescent orange (skin and brown cloth stay below saturation 0.68)
)
# A worker needs at least this share of its torso's mask pixels in a hi-vis colour. Chosen by looking at the
# contact sheet of the 90 objects-v1 people that cut cleanly, sorted by this share (2026-12-07): the vested
# workers seen from the front, back or side score 0.10-0.50 (an orange vest 0.102, the lowest kept); plain
# clothes, dark jackets, camouflage, white or red shirts and hard hats seen from above score below 0.005; in
# between, 0.07-0.097, sit a yellow-black striped shirt, a face, brown clothes and two half-hidden vests,
# which are dropped. One false keep: an orange fashion jacket (0.29): colour alone cannot tell it from a vest.
HIVIS_MIN_SHARE = 0.10
# A person's mask at least this many times taller than wide counts as standing (the stretched site photos make
# people thinner, so upright ones are 2-5; crouching, bending and hard-hat-from-above crops are 0.7-1.5).
_MIN_STANDING = 1.8
# Rows of the mask's vertical extent that make the torso of a standing person (head and legs left out: a
# yellow hard hat or orange boots are not a vest).
_TORSO = (0.18, 0.65)


@dataclass(frozen=True)
class SiteCutout:
    """A worker or machine cut out of a site photo.

    Attributes:
        rgba: uint8 (h, w, 4); alpha is the soft mask.
        cls: ``"worker"`` or ``"machine"`` as cut; as loaded, the role (``"pedestrian"``: a person without
            hi-vis, pasted unlabelled).
        key: corpus key of the photo it came from (fold models leave out held-out photos' cut-outs too).
        hivis: share of hi-vis pixels on the torso (workers; 0 for machines).
    """

    rgba: np.ndarray
    cls: str
    key: str
    hivis: float = 0.0


def hivis_mask(rgb: np.ndarray) -> np.ndarray:
    """Bool (H, W): the pixels of ``rgb`` (uint8 RGB) in a high-visibility colour (:data:`HIVIS_HUES`)."""
    hsv = np.asarray(PILImage.fromarray(np.ascontiguousarray(rgb[..., :3]), "RGB").convert("HSV"), np.float32)
    hue, sat, val = hsv[..., 0] * (360.0 / 255.0), hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
    out = np.zeros(rgb.shape[:2], bool)
    for lo, hi, smin, vmin in HIVIS_HUES:
        out |= (hue >= lo) & (hue <= hi) & (sat >= smin) & (val >= vmin)
    return out


def hivis_share(rgba: np.ndarray) -> float:
    """Share of a person cut-out's torso (mask pixels, rows :data:`_TORSO` of the mask's extent) in hi-vis colours."""
    fg = rgba[..., 3] > 127
    rows = np.flatnonzero(fg.any(1))
    if not len(rows):
        return 0.0
    top, bottom = rows[0], rows[-1] + 1
    a, b = top + int(_TORSO[0] * (bottom - top)), top + int(np.ceil(_TORSO[1] * (bottom - top)))
    torso = fg[a:b]
    if not torso.any():
        return 0.0
    return float(hivis_mask(rgba[a:b])[torso].mean())


def cut_site_object(pixels: np.ndarray, box: Sequence[float], cls: str, *, key: str = "", iterations: int = 4
                    ) -> SiteCutout | None:
    """Cut one boxed worker or machine out of a photo with GrabCut initialised by its box.

    Args:
        pixels: uint8 RGB (H, W, 3), full resolution.
        box: normalised x1, y1, x2, y2.
        cls: ``"worker"`` or ``"machine"``.
        key: the photo's corpus key (kept on the cut-out).
        iterations: GrabCut iterations.

    Returns:
        The cut-out (stored size, soft alpha), or None when the box is tiny, touches the image border, or the
        mask is degenerate (nearly empty, nearly the whole box, in pieces, or not spanning the box: GrabCut
        lost the object).
    """
    cv2 = require("cv2", "cutting workers and machines out of the site photos")
    h, w = pixels.shape[:2]
    x1, y1, x2, y2 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    bw, bh = x2 - x1, y2 - y1
    if (bh if cls == "worker" else min(bw, bh)) < _MIN_PX[cls] or bw < 12:
        return None
    if x1 < _BORDER_PX or y1 < _BORDER_PX or x2 > w - _BORDER_PX or y2 > h - _BORDER_PX:
        return None
    # GrabCut needs background around the rectangle: a margin of 15 % of the box, as far as the image allows.
    mx, my = 0.15 * bw, 0.15 * bh
    cx1, cy1, cx2, cy2 = int(max(0, x1 - mx)), int(max(0, y1 - my)), int(min(w, x2 + mx)), int(min(h, y2 + my))
    crop = np.ascontiguousarray(pixels[cy1:cy2, cx1:cx2])
    # GrabCut is cubic-ish in pixels: work at <= 320 px, then bring the mask back to the crop's size.
    s = min(1.0, 320.0 / max(crop.shape[:2]))
    small = cv2.resize(crop, (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))),
                       interpolation=cv2.INTER_AREA) if s < 1 else crop
    rx1, ry1 = int(round((x1 - cx1) * s)), int(round((y1 - cy1) * s))
    rx2, ry2 = int(round((x2 - cx1) * s)), int(round((y2 - cy1) * s))
    rx1, ry1 = min(max(rx1, 1), small.shape[1] - 2), min(max(ry1, 1), small.shape[0] - 2)
    rect = (rx1, ry1, max(2, min(rx2, small.shape[1] - 1) - rx1), max(2, min(ry2, small.shape[0] - 1) - ry1))
    # Seeds: outside the box is background, inside probably foreground, and a core strip down the box's
    # middle surely foreground (a person's trunk, a machine's body). Without that core, GrabCut initialised
    # with the bare rectangle lost thin people against busy sites (all background) in tries on objects-v1.
    mask = np.full(small.shape[:2], cv2.GC_BGD, np.uint8)
    rx, ry, rw, rh = rect
    mask[ry:ry + rh, rx:rx + rw] = cv2.GC_PR_FGD
    core_w, (core_t, core_b) = (0.12, (0.15, 0.75)) if cls == "worker" else (0.1, (0.35, 0.75))
    mid = rx + rw / 2
    mask[ry + int(core_t * rh):ry + int(core_b * rh), int(mid - core_w * rw):int(np.ceil(mid + core_w * rw))] = cv2.GC_FGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    fg = _largest_component(cv2, fg & _off_plain_background(small))
    inside = fg[rect[1]:rect[1] + rect[3], rect[0]:rect[0] + rect[2]]
    if inside.size == 0 or not _plausible(inside, cls):
        return None
    fg = cv2.resize(fg.astype(np.float32), (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    rows, cols = np.flatnonzero(fg.max(1) > 0.5), np.flatnonzero(fg.max(0) > 0.5)
    fg, crop = fg[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], crop[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    t = min(1.0, _STORE_SIDE / max(crop.shape[:2]))
    size = (max(2, round(crop.shape[1] * t)), max(2, round(crop.shape[0] * t)))
    alpha = cv2.GaussianBlur(cv2.resize(fg, size, interpolation=cv2.INTER_AREA), (0, 0), 0.8)
    rgb = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    rgba = np.dstack([rgb, np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)])
    return SiteCutout(rgba, cls, key, hivis_share(rgba) if cls == "worker" else 0.0)


def _off_plain_background(small: np.ndarray) -> np.ndarray:
    """1 where a pixel differs from a plain backdrop (product photos on white or grey), else 0; all 1 otherwise.

    GrabCut keeps the backdrop seen between an excavator's boom and body (it is enclosed by the object); on a
    plain backdrop, recognised by a uniform border ring, those pixels are removed by their colour.
    """
    ring = np.concatenate([small[:3].reshape(-1, 3), small[-3:].reshape(-1, 3), small[:, :3].reshape(-1, 3),
                           small[:, -3:].reshape(-1, 3)]).astype(np.float32)
    if float(ring.std(0).mean()) > 12.0:
        return np.ones(small.shape[:2], np.uint8)
    return (np.linalg.norm(small.astype(np.float32) - np.median(ring, 0), axis=2) > 30.0).astype(np.uint8)


def _largest_component(cv2, fg: np.ndarray) -> np.ndarray:  # noqa: ANN001 - cv2 is the lazily imported module
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return fg
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    # A second large piece means GrabCut split the object (or took two): reject it later via the fill test.
    return (labels == big).astype(np.uint8)


def _plausible(inside: np.ndarray, cls: str) -> bool:
    """The mask inside the box covers a sane share of it and spans it (an object fills its tight box)."""
    fill = float(inside.mean())
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if not len(rows):
        return False
    span_y = (rows[-1] - rows[0] + 1) / inside.shape[0]
    span_x = (cols[-1] - cols[0] + 1) / inside.shape[1]
    lo, hi = (0.2, 0.9) if cls == "worker" else (0.25, 0.95)
    return lo <= fill <= hi and span_y >= 0.8 and span_x >= 0.6


def _store_name(key: str, index: int) -> str:
    return hashlib.sha1(f"{key}#{index}".encode()).hexdigest()[:16] + ".webp"


def write_site_cutouts(root: str | Path, out: str | Path, *, sources: Sequence[str] = (
        "css_construction_site_safety", "miniexcav_excavator")) -> dict[str, int]:
    """Cut every usable worker and machine of objects-v1 (full resolution, under ``root``) into ``out``.

    Writes ``out/<role>/<name>.webp`` (RGBA) and ``out/cutouts.csv`` (``file,role,key,box_index,hivis``), one
    row per box, ``role`` being ``worker`` (a standing person passing the hi-vis rule), ``pedestrian`` (a standing
    person who does not: pasted unlabelled, as background), ``machine``, or ``rejected`` (tiny, at the border,
    a degenerate mask, or a person not standing; no file), so the rules can be audited. A finished ``cutouts.csv`` makes this a no-op.

    Returns:
        Rows per role.
    """
    from workzone_train.corpus import OBJECTS, load_object_boxes, load_object_images
    from workzone_train.data import load_pixels

    out = Path(out)
    index = out / "cutouts.csv"
    if index.is_file():
        return _counts(index)
    boxes = load_object_boxes(root)
    records: list[dict[str, object]] = []
    for key, path, source, _scene in load_object_images(root):
        if source not in sources:
            continue
        wanted = [(i, b) for i, b in enumerate(boxes.get(key, [])) if b.cls in ("worker", "machine")]
        if not wanted:
            continue
        px = load_pixels(path)
        for i, b in wanted:
            cut = cut_site_object(px, (b.x1, b.y1, b.x2, b.y2), b.cls, key=key)
            role = "rejected" if cut is None else _role(cut)
            name = "" if cut is None else f"{role}/{_store_name(key, i)}"
            if cut is not None:
                (out / role).mkdir(parents=True, exist_ok=True)
                PILImage.fromarray(cut.rgba, "RGBA").save(out / name, "WEBP", quality=80, alpha_quality=90, method=6)
            records.append({"file": name, "role": role, "key": key, "box_index": i,
                            "hivis": "" if cut is None else round(cut.hivis, 4)})
    if not records:
        raise DataError(f"no worker or machine boxes under {Path(root) / OBJECTS}: is objects-v1 there?")
    out.mkdir(parents=True, exist_ok=True)
    tmp = index.with_suffix(".part")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(records[0]))
        wr.writeheader()
        wr.writerows(records)
    tmp.replace(index)
    return _counts(index)


def _role(cut: SiteCutout) -> str:
    if cut.cls == "machine":
        return "machine"
    fg = cut.rgba[..., 3] > 127
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    # Pasted on the road, a person stands: crowd crops (a hard hat from above, a bent back) would be blobs.
    if (rows[-1] - rows[0] + 1) < _MIN_STANDING * (cols[-1] - cols[0] + 1):
        return "rejected"
    return "worker" if cut.hivis >= HIVIS_MIN_SHARE else "pedestrian"


def _counts(index: Path) -> dict[str, int]:
    with index.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, int] = {}
    for r in rows:
        out[r["role"]] = out.get(r["role"], 0) + 1
    return out


def load_site_cutouts(root: str | Path, *, exclude_key: Callable[[str], bool] = lambda key: False
                      ) -> list[SiteCutout]:
    """The stored cut-outs of a corpus (``<root>/objects-v1/cutouts``); [] when it has none.

    Args:
        root: corpus folder.
        exclude_key: predicate on the source photo's key; true leaves its cut-outs out (a fold model must not
            see the objects of the photos held out to measure it).

    Returns:
        Cut-outs whose ``cls`` is the role: ``worker``, ``pedestrian`` or ``machine``.
    """
    from workzone_train.corpus import OBJECTS

    folder = Path(root) / OBJECTS / CUTOUT_DIR
    index = folder / "cutouts.csv"
    if not index.is_file():
        return []
    from PIL import features

    if not features.check("webp"):
        raise DataError(f"{folder} holds WebP cut-outs but this Pillow was built without WebP: install a Pillow "
                        "wheel from PyPI (they include it), or train with --p-site 0")
    out = []
    with index.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if not r["file"] or exclude_key(r["key"]):
                continue
            with PILImage.open(folder / r["file"]) as im:
                rgba = np.asarray(im.convert("RGBA"))
            out.append(SiteCutout(rgba, r["role"], r["key"], float(r["hivis"] or 0.0)))
    return out
