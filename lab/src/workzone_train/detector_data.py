"""Training data for the cone detector: boxed photos plus cones pasted into dashcam scenes.

Boxed sources (TraCon, 99succubus, Glisten-zy) give real cone boxes, but their cameras are stock
photographers'; the negative dashcam scenes (CamVid) get cones pasted small at plausible road
positions with :mod:`workzone_train.synth`, so that the detector sees cones with the negatives'
cameras, and pasted non-cones (orange blobs, grey panels, cone-shaped texture patches) so that a
paste seam or an orange patch alone is not a cone. Sources with cones but no boxes (WMaia9) are
left out: every cone there would be taught as background.

:func:`paste_cones_with_boxes` gives the pasted cones' boxes as the array the target encoder reads.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image as PILImage

from workzone_train.augment import AugmentConfig, _photometric, random_crop_box
from workzone.io.atomic import atomic_path, atomic_write_bytes
from workzone_train.data import ConeBox, load_pixels, load_samples, read_boxes, save_downscaled_jpeg
from workzone_train.detector import encode_targets
from workzone_train import synth
from workzone_train.synth import Cutout, cut_cones, paste_distractors

__all__ = [
    "DetItem",
    "load_det_items",
    "cutouts_from_items",
    "paste_cones_with_boxes",
    "letterbox",
    "DetectionSet",
    "write_compact_subset",
    "clip_boxes",
    "random_geometry",
]

# Sources whose manifest rows are dashcam scenes without road work: paste targets.
SCENE_SOURCES = ("CamVid",)
# Sources with cones that nobody boxed: unusable for a detector either way.
UNBOXED_SOURCES = ("WMaia9-workzone",)


@dataclass(frozen=True)
class DetItem:
    """One image for the detector.

    Attributes:
        path: image file.
        rel: manifest-relative path.
        source: manifest source.
        boxes: (M, 4) normalised x1, y1, x2, y2 cone boxes (empty: no cone).
        scene: a negative dashcam scene that may receive pasted cones.
        label: the manifest's road-work label (after the reviewed fixes).
    """

    path: Path
    rel: str
    source: str
    boxes: np.ndarray
    scene: bool
    label: int


def load_det_items(
    manifest: str | Path,
    boxes_csv: str | Path,
    splits: Sequence[str],
    *,
    exclude_sources: Sequence[str] = (),
    scene_sources: Sequence[str] = SCENE_SOURCES,
) -> list[DetItem]:
    """Detector items of ``splits``: boxed-source images (with or without cones) and scenes.

    Rows of boxed sources labelled 1 without a box (a reviewed relabel such as rollers paving) are
    skipped, since whatever makes them positive is no cone.

    Args:
        manifest: the data set's manifest.
        boxes_csv: its cone boxes.
        splits: manifest splits to load.
        exclude_sources: sources left out (leave-one-source-out training).
        scene_sources: sources whose negatives are backgrounds for pasted cones (a leave-CamVid-out
            detector pastes into the stock negatives instead).
    """
    grouped = read_boxes(boxes_csv)
    boxed_sources = {s.source for s in load_samples(manifest) if s.rel in grouped}
    out = []
    for s in load_samples(manifest, splits=splits, exclude_sources=exclude_sources):
        if s.source in UNBOXED_SOURCES:
            continue
        scene = s.source in scene_sources and s.label == 0
        if not scene and s.source not in boxed_sources:
            continue
        boxes = np.array([_xyxy(b) for b in grouped.get(s.rel, [])], np.float32).reshape(-1, 4)
        if s.label == 1 and len(boxes) == 0 and not scene:
            continue
        out.append(DetItem(s.path, s.rel, s.source, boxes, scene, s.label))
    return out


def _xyxy(b: ConeBox) -> tuple[float, float, float, float]:
    return (b.cx - b.w / 2, b.cy - b.h / 2, b.cx + b.w / 2, b.cy + b.h / 2)


def cutouts_from_items(items: Sequence[DetItem], *, min_px: int = 18) -> list[Cutout]:
    """Cut every usable boxed cone out of ``items`` (via ``synth.cut_cones``)."""
    images, boxes = {}, {}
    for it in items:
        if len(it.boxes):
            images[it.rel] = load_pixels(it.path)
            boxes[it.rel] = [ConeBox(it.rel, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1) for x1, y1, x2, y2 in it.boxes]
    return cut_cones(images, boxes, min_px=min_px)


def paste_cones_with_boxes(scene: np.ndarray, cutouts: Sequence[Cutout], rng: np.random.Generator, *,
                           max_cones: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``synth.paste_cones_with_boxes`` with the visible boxes as an (M, 4) float32 array.

    Returns:
        The new image (H, W, 3) and (M, 4) x1, y1, x2, y2 pixel boxes of visible cones.
    """
    out, pasted = synth.paste_cones_with_boxes(scene, cutouts, rng, max_cones=max_cones)
    return out, np.array([box for _, box in pasted if box is not None], np.float32).reshape(-1, 4)


def letterbox(pixels: np.ndarray, size: int) -> tuple[float, float, float]:
    """The (scale, pad_x, pad_y) that ``resize_for_model(..., "letterbox")`` applies.

    A pixel (x, y) of the image lands at (x * scale + pad_x, y * scale + pad_y) in the input.
    """
    h, w = pixels.shape[:2]
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return nw / w, float((size - nw) // 2), float((size - nh) // 2)


class DetectionSet:
    """A map-style dataset (torch DataLoader compatible) of augmented detector samples.

    Each epoch holds every boxed-source image once and every scene ``scene_repeat`` times; a scene
    draw gets pasted cones with probability ``p_paste`` (and distractors with ``p_distract``). Items
    are drawn from a generator seeded by (seed, epoch, index), so a run is reproducible whatever the
    worker count.

    Returns per index: image float32 (3, S, S) in [0, 1], heat (K, G, G), reg (4, G, G), mask (G, G).
    """

    def __init__(self, items: Sequence[DetItem], cutouts: Sequence[Cutout], *, size: int = 448, seed: int = 0,
                 scene_repeat: int = 2, p_paste: float = 0.6, p_distract: float = 0.5, p_zoom_out: float = 0.35,
                 augment: bool = True) -> None:
        if size % 32:
            raise ValueError(f"size: expected a multiple of 32, got {size}")
        if not cutouts and any(it.scene for it in items):
            raise ValueError("cutouts: scenes need cone cutouts to paste; got none")
        self.items = list(items)
        self.cutouts = list(cutouts)
        self.size = size
        self.seed = seed
        self.p_paste, self.p_distract, self.p_zoom_out = p_paste, p_distract, p_zoom_out
        self.augment = augment
        self.index = [i for i, it in enumerate(self.items) for _ in range(scene_repeat if it.scene else 1)]
        self.epoch = 0
        self.cfg = AugmentConfig(size=size, p_night=0.1, p_fog=0.05, p_rain=0.05, p_glare=0.05, p_jpeg=0.3,
                                 p_resample=0.1)

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x, boxes = self.sample(k)
        heat, reg, mask = encode_targets(boxes, self.size)
        return x, heat, reg, mask

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The augmented input (3, S, S) and its (M, 4) cone boxes in input pixels."""
        rng = np.random.default_rng((self.seed, self.epoch, k))
        it = self.items[self.index[k]]
        px = load_pixels(it.path)
        h, w = px.shape[:2]
        boxes = it.boxes * np.array([w, h, w, h], np.float32)
        if it.scene and self.cutouts:
            if self.augment and rng.random() < self.p_distract:
                px = paste_distractors(px, self.cutouts, rng)
            if not self.augment or rng.random() < self.p_paste:
                px, boxes = paste_cones_with_boxes(px, self.cutouts, rng)
        if self.augment:
            px, boxes = self._geometry(px, boxes, rng)
        scale, padx, pady = letterbox(px, self.size)
        from workzone.io.images import resize_for_model  # PIL-only; kept here to mirror inference

        x = resize_for_model(px, self.size, "letterbox")
        boxes = boxes * scale + np.array([padx, pady, padx, pady], np.float32)
        if self.augment:
            x = _photometric(x, rng, self.cfg).astype(np.float32)
        return x, boxes.astype(np.float32).reshape(-1, 4)

    def _geometry(self, px: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        px, boxes, _ = random_geometry(px, boxes, np.zeros(len(boxes), np.int64), rng, self.p_zoom_out)
        return px, boxes


def clip_boxes(boxes: np.ndarray, w: float, h: float, keep: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Clip (M, 4) boxes to a w x h frame; also the mask of those that keep at least ``keep`` of their area.

    Returns:
        The clipped boxes (all M) and an (M,) bool mask of the ones still worth a target.
    """
    if not len(boxes):
        return boxes, np.zeros(0, bool)
    c = np.stack([np.clip(boxes[:, 0], 0, w), np.clip(boxes[:, 1], 0, h),
                  np.clip(boxes[:, 2], 0, w), np.clip(boxes[:, 3], 0, h)], axis=1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    return c, (kept >= keep * np.maximum(area, 1e-6)) & (c[:, 2] - c[:, 0] >= 2) & (c[:, 3] - c[:, 1] >= 2)


def write_compact_subset(manifest: str | Path, boxes_csv: str | Path, out_dir: str | Path, *,
                         splits: Sequence[str], max_side: int = 448, quality: int = 85) -> Path:
    """Downscaled copy of the images the detector trains on (for the GPU machine's 64 MiB limit).

    Writes ``out_dir/manifest.csv`` (rows of the kept images) and ``boxes.csv`` (unchanged, boxes
    are normalised). Keep ``out_dir`` git-ignored: the images must never be committed.

    Returns:
        The new manifest's path.
    """
    manifest, out_dir = Path(manifest), Path(out_dir)
    keep = {it.rel for it in load_det_items(manifest, boxes_csv, splits)}
    out_dir.mkdir(parents=True, exist_ok=True)
    with manifest.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows = [r for r in rows if r["path"] in keep]
    for r in rows:
        save_downscaled_jpeg(manifest.parent / r["path"], out_dir / r["path"], max_side=max_side, quality=quality)
    with atomic_path(out_dir / "manifest.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0].keys()) if rows else ["path"])
        wr.writeheader()
        wr.writerows(rows)
    atomic_write_bytes(out_dir / "boxes.csv", Path(boxes_csv).read_bytes())
    return out_dir / "manifest.csv"


def random_geometry(px: np.ndarray, boxes: np.ndarray, classes: np.ndarray, rng: np.random.Generator, p_zoom_out: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random crop (p 0.6, keeping a box centre), mirror (p 0.5) and, for big boxes, zoom-out onto black.

    Boxes (M, 4) in pixels move with the image; ``classes`` (M,) follow the boxes that survive a crop.
    """
    h, w = px.shape[:2]
    if rng.random() < 0.6:
        centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
        x1, y1, x2, y2 = random_crop_box(w, h, rng, min_area=0.35, keep_points=centres)
        px = px[y1:y2, x1:x2]
        boxes, ok = clip_boxes(boxes - np.array([x1, y1, x1, y1], np.float32), x2 - x1, y2 - y1)
        boxes, classes = (boxes[ok], classes[ok]) if len(ok) else (boxes, classes)
        h, w = px.shape[:2]
    if rng.random() < 0.5:
        px = px[:, ::-1]
        if len(boxes):
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
    big = len(boxes) and float(np.median(boxes[:, 3] - boxes[:, 1])) > 0.15 * h
    if big and rng.random() < p_zoom_out:
        # Shrink onto a black canvas so the big objects of photos become the small ones of dashcams.
        f = float(rng.uniform(0.3, 0.8))
        nw, nh = max(8, int(w * f)), max(8, int(h * f))
        small = np.asarray(PILImage.fromarray(np.ascontiguousarray(px)).resize((nw, nh), PILImage.BILINEAR))
        canvas = np.zeros_like(px)
        ox, oy = int(rng.integers(0, w - nw + 1)), int(rng.integers(0, h - nh + 1))
        canvas[oy:oy + nh, ox:ox + nw] = small
        px = canvas
        boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32) + np.array([ox, oy, ox, oy], np.float32)
    return np.ascontiguousarray(px), boxes, classes
