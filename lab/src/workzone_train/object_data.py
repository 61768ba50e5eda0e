"""Training data for the multi-class work-zone object detector.

Two kinds of item make an epoch:

- **real**: photos with real boxes — cones (TraCon, 99succubus, Glisten-zy), road-work signs in
  German street scenes (GTSDB), workers and machines on sites. Their images without a box are real
  negatives.
- **scene**: every image without road work from the training sources (dashcams by day, night, rain
  and fog, highway CCTV, stock roads), drawn ``scene_repeat`` times an epoch; a draw gets a
  synthetic work zone (:mod:`workzone_train.scene_synth`) with probability ``p_paste``, and
  orange-but-not-road-work distractors with probability ``p_distract``.

Road-work images that nobody boxed (the US dashcam work zones, the CCTV lane closure) are left
out: every object there would be taught as background. Each item is drawn from a generator seeded
by (seed, epoch, index), so a run is reproducible whatever the worker count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image as PILImage

from workzone.io.images import resize_for_model
from workzone_train.augment import AugmentConfig, _jpeg, _photometric, _pil_op, random_crop_box
from workzone_train.corpus import ObjectBox, load_corpus, load_lookalike_crops, load_object_boxes, load_object_images
from workzone_train.data import ConeBox, load_pixels
from workzone_train.detector import encode_targets
from workzone_train.detector_data import clip_boxes, random_geometry
from workzone_train.scene_synth import (OBJECT_CLASSES, SignCutout, SiteCutouts, paste_lookalike_signs,
                                           paste_work_zone_objects, sign_cutout)
from workzone_train.synth import Cutout, cut_cones, paste_distractors

__all__ = ["ObjectItem", "load_object_items", "make_cutouts", "ObjectDetectionSet", "object_holdout"]

# Box classes of the data sets -> detector classes. "sign_other" (any traffic sign that is not the road-work
# sign: objects-v2 boxes every one in 873 German scenes) is a class of its own, so that the detector learns
# it apart from "sign" and the decision can ignore it.
_OBJECT_CLASS_MAP = {"cone": "cone", "sign_roadwork": "sign", "worker": "worker", "machine": "machine",
                     "sign_other": "sign_other"}
# objects-v1 sources whose images are whole-crop signs: cut out and pasted, not trained on as frames.
_SIGN_CROP_SOURCES = ("gtsrb_roadwork", "gtsrb_roadwork_test")


@dataclass(frozen=True)
class ObjectItem:
    """One detector image.

    Attributes:
        key: corpus key.
        path: image file.
        source: its source.
        boxes: (M, 4) normalised x1, y1, x2, y2.
        classes: (M,) indices into OBJECT_CLASSES.
        scene: a frame without road work that may receive a synthetic work zone.
    """

    key: str
    path: Path
    source: str
    boxes: np.ndarray
    classes: np.ndarray
    scene: bool


def object_holdout(key: str, fraction: float = 0.2) -> bool:
    """Whether an objects-v1 image is held out of fold models, to measure per-class recall on real boxes."""
    h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def _arrays(boxes: Sequence[ObjectBox]) -> tuple[np.ndarray, np.ndarray]:
    keep = [b for b in boxes if _OBJECT_CLASS_MAP.get(b.cls) is not None]
    xyxy = np.array([(b.x1, b.y1, b.x2, b.y2) for b in keep], np.float32).reshape(-1, 4)
    cls = np.array([OBJECT_CLASSES.index(_OBJECT_CLASS_MAP[b.cls]) for b in keep], np.int64)
    return np.clip(xyxy, 0.0, 1.0), cls


def load_object_items(root: str | Path, *, exclude_sources: Sequence[str] = (), holdout_objects: bool = False
                      ) -> tuple[list[ObjectItem], list[Path]]:
    """Detector items and the road-work sign-crop paths (for cutouts).

    A left-out source also leaves out the objects-v1 scenes of the same camera (``gtsdb_scenes`` takes
    ``gtsdb_roadwork`` with it), so a fold never saw the camera it is scored on.

    Args:
        root: folder with roadwork-v1, roadwork-v2, objects-v1.
        exclude_sources: corpus sources left out (leave-one-source-out).
        holdout_objects: leave out the objects-v1 images of :func:`object_holdout`.
    """
    boxes = load_object_boxes(root)
    boxed_sources = {k.split("/")[0] + "/" + s.source for s in load_corpus(root)
                     for k in [s.key] if k in boxes}
    items: list[ObjectItem] = []
    for s in load_corpus(root, exclude_sources=exclude_sources):
        has_boxes = f"{s.key.split('/')[0]}/{s.source}" in boxed_sources
        if s.key in boxes or (has_boxes and s.label == 0):
            xyxy, cls = _arrays(boxes.get(s.key, []))
            if s.label == 1 and not len(xyxy):
                continue  # positive for something that is not boxed
            items.append(ObjectItem(s.key, s.path, s.source, xyxy, cls, scene=s.label == 0))
        elif s.label == 0:
            items.append(ObjectItem(s.key, s.path, s.source, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), True))
    sign_crops: list[Path] = []
    same_camera = {src for left in exclude_sources for src in SAME_CAMERA.get(left, ())}
    for key, path, source, _scene in load_object_images(root):
        if source in same_camera or (holdout_objects and object_holdout(key)):
            continue
        if source in _SIGN_CROP_SOURCES:
            sign_crops.append(path)
            continue
        xyxy, cls = _arrays(boxes.get(key, []))
        items.append(ObjectItem(key, path, source, xyxy, cls, scene=False))
    return items, sign_crops


# objects-v1 sources filmed by the camera of a corpus source.
SAME_CAMERA: dict[str, tuple[str, ...]] = {"gtsdb_scenes": ("gtsdb_roadwork",)}


def load_lookalike_cutouts(root: str | Path) -> list[SignCutout]:
    """Cut-outs of the warning triangles that are not the road-work sign (objects-v2 ``gtsrb_warning``)."""
    signs = [sign_cutout(load_pixels(p)) for p in load_lookalike_crops(root)]
    return [s for s in signs if min(s.rgba.shape[:2]) >= 16]


def make_cutouts(items: Sequence[ObjectItem], sign_crops: Sequence[Path], *, min_px: int = 14
                 ) -> tuple[list[Cutout], list[SignCutout]]:
    """Real cone cutouts (from boxed cone photos) and real sign cutouts (from sign crops)."""
    images, cone_boxes = {}, {}
    cone = OBJECT_CLASSES.index("cone")
    for it in items:
        sel = it.boxes[it.classes == cone]
        if len(sel):
            images[it.key] = load_pixels(it.path)
            cone_boxes[it.key] = [ConeBox(it.key, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1) for x1, y1, x2, y2 in sel]
    cones = cut_cones(images, cone_boxes, min_px=min_px)
    signs = [sign_cutout(load_pixels(p)) for p in sign_crops]
    return cones, [s for s in signs if min(s.rgba.shape[:2]) >= 16]


class ObjectDetectionSet:
    """Map-style dataset (torch DataLoader compatible) of augmented multi-class detector samples.

    Returns per index: image float32 (3, S, S) in [0, 1], heat (K, G, G), reg (4, G, G), mask (G, G).
    """

    def __init__(self, items: Sequence[ObjectItem], cones: Sequence[Cutout], signs: Sequence[SignCutout], *,
                 size: int = 384, seed: int = 0, scene_repeat: int = 2, p_paste: float = 0.65,
                 p_distract: float = 0.35, p_zoom_out: float = 0.35, augment: bool = True,
                 photometric: bool = True, lookalikes: Sequence[SignCutout] = (), p_lookalike: float = 0.3,
                 site: SiteCutouts | None = None, p_site: float = 0.2) -> None:
        if size % 32:
            raise ValueError(f"size: expected a multiple of 32, got {size}")
        self.items, self.cones, self.signs = list(items), list(cones), list(signs)
        self.size, self.seed, self.augment = size, seed, augment
        # False when the training loop applies :func:`workzone_train.batch_augment.augment_batch`
        # on the GPU instead; JPEG artefacts, which need an encoder, stay here either way.
        self.photometric = photometric
        self.p_paste, self.p_distract, self.p_zoom_out = p_paste, p_distract, p_zoom_out
        self.lookalikes, self.p_lookalike = list(lookalikes), p_lookalike
        # Workers, machines (labelled) and pedestrians (not) pasted into scenes at dashcam scale, p_site of the kits.
        self.site, self.p_site = site, p_site
        self.index = [i for i, it in enumerate(self.items) for _ in range(scene_repeat if it.scene else 1)]
        self.epoch = 0
        # Night, fog and rain are what the hidden cameras show and the boxed photos never do.
        self.cfg = AugmentConfig(size=size, p_night=0.25, p_fog=0.1, p_rain=0.08, p_glare=0.1, p_jpeg=0.4,
                                 p_resample=0.2, p_noise=0.2)

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x, boxes, classes = self.sample(k)
        heat, reg, mask = encode_targets(boxes, self.size, classes=classes, num_classes=len(OBJECT_CLASSES))
        return x, heat, reg, mask

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The augmented input (3, S, S), its (M, 4) boxes in input pixels and (M,) classes."""
        rng = np.random.default_rng((self.seed, self.epoch, k))
        it = self.items[self.index[k]]
        px = load_pixels(it.path)
        h, w = px.shape[:2]
        boxes = it.boxes * np.array([w, h, w, h], np.float32)
        classes = it.classes.copy()
        if it.scene:
            if self.augment and self.cones and rng.random() < self.p_distract:
                px = paste_distractors(px, self.cones, rng)
            if self.augment and self.lookalikes and rng.random() < self.p_lookalike:
                px, nb, nc = paste_lookalike_signs(px, self.lookalikes, rng)
                boxes, classes = np.concatenate([boxes, nb]), np.concatenate([classes, nc])
            if not self.augment or rng.random() < self.p_paste:
                px, nb, nc = paste_work_zone_objects(px, self.cones, self.signs, rng, site=self.site,
                                                     p_site=self.p_site)
                boxes, classes = np.concatenate([boxes, nb]), np.concatenate([classes, nc])
        if self.augment:
            px, boxes, classes = random_geometry(px, boxes, classes, rng, self.p_zoom_out)
        h, w = px.shape[:2]
        scale = self.size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        padx, pady = (self.size - nw) // 2, (self.size - nh) // 2
        x = resize_for_model(px, self.size, "letterbox")
        boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32) + np.array([padx, pady, padx, pady], np.float32)
        if self.augment:
            if self.photometric:
                x = _photometric(x, rng, self.cfg).astype(np.float32)
                x = _lights_and_motion(x, rng)
            elif rng.random() < self.cfg.p_jpeg:
                q = int(rng.choice([75, 75, int(rng.integers(40, 95))]))
                x = _pil_op(x, lambda im: _jpeg(im, q))
            if rng.random() < 0.1:
                x, boxes, classes = _fisheye(x, boxes, classes, float(rng.uniform(0.15, 0.45)))
        return x.astype(np.float32), boxes.astype(np.float32).reshape(-1, 4), classes


def _clip(boxes: np.ndarray, classes: np.ndarray, w: float, h: float, keep: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to a w x h frame; drop those (and their classes) that keep less than ``keep`` of their area."""
    if not len(boxes):
        return boxes, classes
    c, ok = clip_boxes(boxes, w, h, keep)
    return c[ok], classes[ok]



def _lights_and_motion(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Motion blur and point lights with bloom on a (3, S, S) input."""
    s = x.shape[-1]
    if rng.random() < 0.12:
        # Motion blur: the mean of shifted copies along a random direction.
        n = int(rng.integers(3, 9))
        ang = rng.uniform(0, np.pi)
        acc = np.zeros_like(x)
        for i in range(n):
            t = i - (n - 1) / 2
            acc += np.roll(x, (int(round(t * np.sin(ang))), int(round(t * np.cos(ang)))), axis=(1, 2))
        x = acc / n
    if rng.random() < 0.15:
        # Head and street lights: small saturated spots with a wide glow.
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        for _ in range(int(rng.integers(1, 7))):
            gx, gy = rng.uniform(0, s), rng.uniform(0.2 * s, 0.8 * s)
            r = rng.uniform(1.5, 6.0)
            colour = np.array([1.0, rng.uniform(0.75, 1.0), rng.uniform(0.45, 1.0)], np.float32)[:, None, None]
            d2 = (xx - gx) ** 2 + (yy - gy) ** 2
            x = x + colour * (np.exp(-d2 / (2 * r * r)) + 0.25 * np.exp(-d2 / (2 * (4 * r) ** 2)))[None]
        x = np.clip(x, 0, 1)
    return x.astype(np.float32)


def _fisheye(x: np.ndarray, boxes: np.ndarray, classes: np.ndarray, k: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Barrel distortion: an output pixel at normalised radius r samples the input at r (1 + k r^2)."""
    s = x.shape[-1]
    c = (s - 1) / 2
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    u, v = (xx - c) / c, (yy - c) / c
    f = 1 + k * (u * u + v * v)
    sx = np.clip(np.rint(u * f * c + c), 0, s - 1).astype(np.int64)
    sy = np.clip(np.rint(v * f * c + c), 0, s - 1).astype(np.int64)
    out = x[:, sy, sx]
    if len(boxes):
        # Map box outlines forward (input -> output) by inverting the radial factor with a few fixed-point steps.
        t = np.linspace(0, 1, 9, dtype=np.float32)
        new = []
        for x1, y1, x2, y2 in boxes:
            px_ = np.concatenate([x1 + (x2 - x1) * t, np.full(9, x2), x1 + (x2 - x1) * t, np.full(9, x1)])
            py_ = np.concatenate([np.full(9, y1), y1 + (y2 - y1) * t, np.full(9, y2), y1 + (y2 - y1) * t])
            ui, vi = (px_ - c) / c, (py_ - c) / c
            uo, vo = ui.copy(), vi.copy()
            for _ in range(8):
                g = 1 + k * (uo * uo + vo * vo)
                uo, vo = ui / g, vi / g
            ox, oy = uo * c + c, vo * c + c
            new.append((ox.min(), oy.min(), ox.max(), oy.max()))
        boxes, classes = _clip(np.array(new, np.float32), classes, s, s)
    return out, boxes, classes
