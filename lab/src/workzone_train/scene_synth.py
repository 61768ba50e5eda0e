"""Domain-randomised work zones with exact boxes, for the multi-class object detector.

Why: real boxes exist only for cones (stock photos), road-work signs (German scenes and sign
crops), workers and machines (site photos). Drums, posts, barricades, barriers, fences and arrow
boards have none, and no boxed object stands in a night, rain or fog dashcam frame. So objects are
placed in perspective on the road of real *negative* scenes from every source the model may train
on (the cameras it must not learn as "road work"), one kit at a time as work zones are laid out:
a row of cones, drums, posts or barrier blocks closing a lane; a barricade, beam, sign or arrow
board standing alone with a few cones; a sign cut from a real sign photo on a post. Every object's
visible box is exact because we drew it. Light, weather and camera effects are applied to the
whole composed frame afterwards (:mod:`workzone_train.object_data`), so objects and scene
degrade together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFilter

from workzone_train.props import BOX_TOP_FRACTION, PROPS, draw_prop
from workzone_train.synth import Cutout, _paste, _placements, _visible_box

__all__ = ["OBJECT_CLASSES", "LOOKALIKE_CLASSES", "PROP_CLASS", "SignCutout", "sign_cutout", "paste_work_zone_objects",
           "paste_lookalike_signs"]

# The detector's classes, in output-channel order. Grouped by what a work zone is built from:
# channelizing devices (cone, drum, post), closures (barricade, barrier incl. fences), signs and
# boards, people and machines.
OBJECT_CLASSES: tuple[str, ...] = ("cone", "drum", "post", "barricade", "barrier", "sign", "arrow_board", "worker",
                                   "machine", "sign_other")
# Classes the detector learns in order to tell them apart from work-zone objects; they are never evidence of
# road work (a warning triangle that is not the road-work sign, a speed limit, a keep-right sign).
LOOKALIKE_CLASSES: tuple[str, ...] = ("sign_other",)
PROP_CLASS: dict[str, str] = {
    "drum": "drum", "channelizer": "post", "leitbake": "post", "barricade": "barricade", "striped_beam": "barricade",
    "barrier": "barrier", "fence": "barrier", "diamond_sign": "sign", "triangle_sign": "sign", "panel_sign": "sign",
    "arrow_board": "arrow_board",
}
_ROW_KITS = ("cone", "cone", "drum", "channelizer", "leitbake", "barrier", "fence")
_SINGLE_KITS = ("barricade", "striped_beam", "diamond_sign", "triangle_sign", "panel_sign", "arrow_board", "real_sign")


@dataclass(frozen=True)
class SignCutout:
    """A real road-work sign panel (from a sign crop), RGBA with a triangular soft mask."""

    rgba: np.ndarray


def sign_cutout(crop: np.ndarray) -> SignCutout:
    """Mask a sign crop (the sign fills the crop, with a small margin) with its triangle.

    Road-work signs of the crops (GTSRB class 25) are upward triangles; the crop margin is about
    10 % on each side.
    """
    h, w = crop.shape[:2]
    mask = PILImage.new("L", (w, h), 0)
    mx, my = 0.08 * w, 0.08 * h
    ImageDraw.Draw(mask).polygon([(w / 2, my), (w - mx, h - my), (mx, h - my)], fill=255)
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(max(0.5, w / 60))))
    return SignCutout(np.dstack([crop, alpha]).astype(np.uint8))


def _sign_on_post(sign: SignCutout, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The sign panel above a grey post, and the fraction of the height the panel takes."""
    panel = sign.rgba
    ph, pw = panel.shape[:2]
    post_h = int(ph * rng.uniform(0.8, 1.6))
    out = np.zeros((ph + post_h, pw, 4), np.uint8)
    out[:ph] = panel
    half = max(1, pw // 24)
    out[ph:, pw // 2 - half:pw // 2 + half + 1] = (110, 110, 110, 255)
    return out, ph / (ph + post_h)


def _box_of(rgba: np.ndarray, top_fraction: float, x: float, y: float, height: float, w: int, h: int
            ) -> tuple[float, float, float, float] | None:
    if top_fraction >= 1.0:
        return _visible_box(rgba, x, y, height, w, h)
    cut = rgba.copy()
    cut[int(round(rgba.shape[0] * top_fraction)):, :, 3] = 0
    return _visible_box(cut, x, y, height, w, h)


def paste_work_zone_objects(
    scene: np.ndarray,
    cones: Sequence[Cutout],
    signs: Sequence[SignCutout],
    rng: np.random.Generator,
    *,
    max_items: int = 7,
    p_second_kit: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste one or two work-zone kits into ``scene``.

    Args:
        scene: uint8 RGB (H, W, 3), a frame without road work.
        cones: real cone cutouts (may be empty: drawn props only).
        signs: real sign cutouts (may be empty).
        rng: random generator.
        max_items: most objects in a row kit.
        p_second_kit: chance of a second kit in the same frame.

    Returns:
        The new image, (M, 4) float32 pixel boxes x1, y1, x2, y2 of the objects that show, and (M,)
        int64 class indices into :data:`OBJECT_CLASSES`.
    """
    h, w = scene.shape[:2]
    out = scene.copy()
    boxes: list[tuple[float, float, float, float]] = []
    classes: list[int] = []
    kits = 2 if rng.random() < p_second_kit else 1
    for _ in range(kits):
        for rgba, top, cls, (x, y, height) in _kit(h, w, cones, signs, rng, max_items):
            if _paste(out, rgba, x, y, height, rng, match=True) is None:
                continue
            box = _box_of(rgba, top, x, y, height, w, h)
            if box is not None:
                boxes.append(box)
                classes.append(OBJECT_CLASSES.index(cls))
    return out, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)


def _kit(h: int, w: int, cones: Sequence[Cutout], signs: Sequence[SignCutout], rng: np.random.Generator,
         max_items: int) -> list[tuple[np.ndarray, float, str, tuple[float, float, float]]]:
    """The objects of one kit as (rgba, box top fraction, class, (x, y_base, height))."""
    items: list[tuple[np.ndarray, float, str, tuple[float, float, float]]] = []
    if rng.random() < 0.55:
        name = _ROW_KITS[int(rng.integers(len(_ROW_KITS)))]
        if name == "cone" and not cones:
            name = "drum"
        wide = name in ("barrier", "fence")
        n = int(rng.integers(1, 3)) if wide else int(rng.integers(2, max_items + 1))
        places = _placements(h, w, n, rng, row=True)
        names = [name] * n
    else:
        name = _SINGLE_KITS[int(rng.integers(len(_SINGLE_KITS)))]
        if name == "real_sign" and not signs:
            name = "triangle_sign"
        extra = int(rng.integers(0, 4))
        places = _placements(h, w, 1 + extra, rng, row=rng.random() < 0.5)
        filler = "cone" if cones and rng.random() < 0.6 else "drum"
        names = [name] + [filler] * extra
        rng.shuffle(names)
    same_cone = cones[int(rng.integers(len(cones)))] if cones else None
    for (x, y, height), kind in zip(places, names):
        if kind == "cone":
            cut = same_cone if rng.random() < 0.7 else cones[int(rng.integers(len(cones)))]
            items.append((cut.rgba, 1.0, "cone", (x, y, height)))
        elif kind == "real_sign":
            rgba, top = _sign_on_post(signs[int(rng.integers(len(signs)))], rng)
            size = min(height * 3.0 * rng.uniform(0.8, 1.2), 0.45 * h)
            items.append((rgba, top, "sign", (x, y, size)))
        else:
            size = min(height * PROPS[kind][1] * rng.uniform(0.8, 1.2), 0.45 * h)
            rgba = draw_prop(kind, rng, px=int(np.clip(size * 2, 24, 240)))
            items.append((rgba, BOX_TOP_FRACTION.get(kind, 1.0), PROP_CLASS[kind], (x, y, size)))
    return items


def paste_lookalike_signs(scene: np.ndarray, signs: Sequence[SignCutout], rng: np.random.Generator, *,
                          max_signs: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste one or two real warning triangles that are *not* the road-work sign, on posts, as ``sign_other``.

    Why: the synthetic and real road-work signs are red-bordered triangles too; without triangles that are
    labelled something else, the detector learns "triangle = road work" (a level-crossing or bend sign
    raised 12 of 61 false alarms on unseen cameras).

    Returns:
        The new image, (M, 4) float32 pixel boxes of the sign panels that show, (M,) int64 class indices.
    """
    h, w = scene.shape[:2]
    out = scene.copy()
    boxes: list[tuple[float, float, float, float]] = []
    n = int(rng.integers(1, max_signs + 1))
    for x, y, height in _placements(h, w, n, rng, row=False):
        rgba, top = _sign_on_post(signs[int(rng.integers(len(signs)))], rng)
        size = min(height * 3.0 * rng.uniform(0.8, 1.2), 0.45 * h)
        if _paste(out, rgba, x, y, size, rng, match=True) is None:
            continue
        box = _box_of(rgba, top, x, y, size, w, h)
        if box is not None:
            boxes.append(box)
    cls = np.full(len(boxes), OBJECT_CLASSES.index("sign_other"), np.int64)
    return out, np.array(boxes, np.float32).reshape(-1, 4), cls
