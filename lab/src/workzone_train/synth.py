"""Copy-paste synthesis: cones cut from boxed photos, pasted small into negative road scenes.

Why: in roadwork-v1 the positives and negatives mostly come from different cameras, so a model can
separate them by camera, colour grading or watermark. Pasting cones into the *negative* scenes
(CamVid dashcam frames, stock road photos) makes positives that share the negatives' cameras;
pasting non-cone patches with the same soft masks (hard negatives) stops the model from keying
on the paste itself.

Masks need no OpenCV: inside the box, a cone is a trapezoid (narrow top, wide base) whose pixels
differ from the box's border colour; the soft alpha is that prior times the colour difference,
blurred so that edges blend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFilter

from workzone_train.data import ConeBox
from workzone_train.props import PROPS, draw_prop

__all__ = [
    "Cutout", "cut_cone", "cut_cones", "paste_cones", "paste_cones_with_boxes", "paste_distractors", "paste_work_zone",
]


@dataclass(frozen=True)
class Cutout:
    """A cone cut out of a photo.

    Attributes:
        rgba: uint8 array (h, w, 4); alpha is the soft mask.
        rel: the image it came from.
    """

    rgba: np.ndarray
    rel: str


def cut_cone(pixels: np.ndarray, box: ConeBox, *, min_px: int = 18) -> Cutout | None:
    """Cut one cone out of an image with a soft mask.

    Args:
        pixels: uint8 RGB image (H, W, 3).
        box: the cone's normalised box.
        min_px: skip boxes smaller than this many pixels tall (too blurry to paste).

    Returns:
        The cutout, or None when the box is too small, touches the image border (a cut cone), or
        the mask came out degenerate.
    """
    h, w = pixels.shape[:2]
    x1, x2 = (box.cx - box.w / 2) * w, (box.cx + box.w / 2) * w
    y1, y2 = (box.cy - box.h / 2) * h, (box.cy + box.h / 2) * h
    if y2 - y1 < min_px or x2 - x1 < 6:
        return None
    if x1 < 1 or y1 < 1 or x2 > w - 1 or y2 > h - 1:
        return None
    mx, my = 0.06 * (x2 - x1), 0.04 * (y2 - y1)
    cx1, cy1 = int(max(0, x1 - mx)), int(max(0, y1 - my))
    cx2, cy2 = int(min(w, x2 + mx)), int(min(h, y2 + my))
    crop = pixels[cy1:cy2, cx1:cx2].astype(np.float32)
    ch, cw = crop.shape[:2]
    ring = np.concatenate([crop[:2].reshape(-1, 3), crop[-2:].reshape(-1, 3), crop[:, :2].reshape(-1, 3), crop[:, -2:].reshape(-1, 3)])
    bg = np.median(ring, axis=0)
    diff = np.clip((np.linalg.norm(crop - bg, axis=2) - 25.0) / 45.0, 0.0, 1.0)
    prior = _trapezoid(cw, ch, x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1)
    alpha = prior * np.maximum(diff, 0.35 * prior)  # keep some of the body where it matches the bg
    fill = alpha.mean() / max(prior.mean(), 1e-6)
    if fill < 0.25:
        return None
    a = PILImage.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(max(0.6, ch / 80)))
    rgba = np.dstack([crop.astype(np.uint8), np.asarray(a)])
    return Cutout(rgba, box.rel)


def cut_cones(images: dict[str, np.ndarray], boxes: dict[str, list[ConeBox]], *, min_px: int = 18) -> list[Cutout]:
    """Cut every usable cone out of ``images`` (rel path -> pixels)."""
    out = []
    for rel, pixels in images.items():
        for box in boxes.get(rel, []):
            c = cut_cone(pixels, box, min_px=min_px)
            if c is not None:
                out.append(c)
    return out


def _trapezoid(cw: int, ch: int, x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    # A cone seen from the road: apex at the top centre, base the full box width.
    im = PILImage.new("L", (cw, ch), 0)
    bw = x2 - x1
    top_half = 0.18 * bw
    mid = (x1 + x2) / 2
    ImageDraw.Draw(im).polygon([(mid - top_half, y1), (mid + top_half, y1), (x2, y2), (x1, y2)], fill=255)
    return np.asarray(im, dtype=np.float32) / 255.0


def _placements(h: int, w: int, n: int, rng: np.random.Generator, *, row: bool) -> list[tuple[float, float, float]]:
    """(x, y_base, height) in pixels for ``n`` objects on a plausible road layout, far first.

    A horizon at 38-55 % of the frame; objects stand on lines running from a vanishing point to
    the bottom corners (a row of cones closing a lane) or scattered over the lower half; the
    height grows linearly with the distance below the horizon, like a flat road seen in
    perspective.
    """
    horizon = rng.uniform(0.38, 0.55) * h
    vx = w * rng.uniform(0.35, 0.65)
    k = rng.uniform(0.12, 0.32)  # object height per pixel below the horizon
    side = rng.choice([-1.0, 1.0])
    xb_row = w * (0.5 + side * rng.uniform(0.15, 0.55))
    out = []
    for _ in range(n):
        t = rng.uniform(0.12, 1.0)
        xb = xb_row if row else w * (0.5 + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.6))
        x = vx + t * (xb - vx) + rng.normal(0, 0.01 * w)
        y = horizon + t * (h - horizon) * rng.uniform(0.85, 1.0)
        height = float(np.clip(k * (y - horizon), 0.03 * h, 0.22 * h))
        out.append((float(x), float(y), height))
    return sorted(out, key=lambda p: p[1])


def paste_cones(
    scene: np.ndarray,
    cutouts: Sequence[Cutout],
    rng: np.random.Generator,
    *,
    max_cones: int = 6,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Paste 1..``max_cones`` cones into ``scene`` at plausible road positions.

    Args:
        scene: uint8 RGB (H, W, 3) negative scene.
        cutouts: cones to draw from.
        rng: random generator.
        max_cones: most cones per image.

    Returns:
        The new image and the (x, y) pixel centres of the pasted cones that lie inside the frame.
    """
    out, pasted = paste_cones_with_boxes(scene, cutouts, rng, max_cones=max_cones)
    return out, [centre for centre, _ in pasted]


def paste_cones_with_boxes(
    scene: np.ndarray, cutouts: Sequence[Cutout], rng: np.random.Generator, *, max_cones: int = 6,
) -> tuple[np.ndarray, list[tuple[tuple[float, float], tuple[float, float, float, float] | None]]]:
    """:func:`paste_cones`, also giving each pasted cone's visible pixel box.

    Returns:
        The new image and, per pasted cone, its (x, y) centre and its (x1, y1, x2, y2) box — the
        cutout's opaque part scaled as pasted and clipped to the frame — or None when too little of
        the cone shows to count as one. Draws from ``rng`` exactly as :func:`paste_cones` does.
    """
    h, w = scene.shape[:2]
    row = rng.random() < 0.55
    n = int(rng.integers(2 if row else 1, max_cones + 1))
    # A lane closure uses one kind of cone; scattered cones may differ.
    same = cutouts[int(rng.integers(len(cutouts)))]
    out = scene.copy()
    pasted = []
    for x, y, height in _placements(h, w, n, rng, row=row):
        cut = same if row else cutouts[int(rng.integers(len(cutouts)))]
        centre = _paste(out, cut.rgba, x, y, height, rng, match=True)
        if centre is not None:
            pasted.append((centre, _visible_box(cut.rgba, x, y, height, w, h)))
    return out, pasted


# Props that line up along a lane edge (several of one kind) vs. ones that stand alone.
_ROW_PROPS = ("drum", "channelizer", "barrier")
_SINGLE_PROPS = ("barricade", "diamond_sign", "triangle_sign", "arrow_board")


def paste_work_zone(
    scene: np.ndarray, cutouts: Sequence[Cutout], rng: np.random.Generator, *, p_cones: float = 0.5, max_items: int = 6,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Paste a small work zone into ``scene``: cut-out cones, or drawn props (:mod:`props`).

    With probability ``p_cones`` this is :func:`paste_cones`. Otherwise one kit: a row of drums,
    channelizers or barrier blocks closing a lane, or a barricade, sign or arrow board standing
    alone, sometimes with a few cones beside it. Props are scaled relative to a cone at the same
    spot (a drum is taller, a sign on its post much taller).

    Returns:
        The new image and the (x, y) centres of the pasted objects inside the frame.
    """
    if p_cones >= 1.0 or rng.random() < p_cones:
        return paste_cones(scene, cutouts, rng, max_cones=max_items)
    h, w = scene.shape[:2]
    out = scene.copy()
    centres: list[tuple[float, float]] = []
    if rng.random() < 0.5:
        name = _ROW_PROPS[int(rng.integers(len(_ROW_PROPS)))]
        n = int(rng.integers(2, max_items + 1)) if name != "barrier" else int(rng.integers(1, 3))
        places = _placements(h, w, n, rng, row=True)
        names = [name] * n
    else:
        name = _SINGLE_PROPS[int(rng.integers(len(_SINGLE_PROPS)))]
        extra = int(rng.integers(0, 4)) if cutouts else 0
        places = _placements(h, w, 1 + extra, rng, row=rng.random() < 0.5)
        names = [name] + ["cone"] * extra
        rng.shuffle(names)
    for (x, y, height), kind in zip(places, names):
        if kind == "cone":
            rgba, size = cutouts[int(rng.integers(len(cutouts)))].rgba, height
        else:
            maker_scale = PROPS[kind][1]
            size = min(height * maker_scale * rng.uniform(0.8, 1.2), 0.45 * h)
            rgba = draw_prop(kind, rng, px=int(np.clip(size * 2, 24, 240)))
        centre = _paste(out, rgba, x, y, size, rng, match=True)
        if centre is not None:
            centres.append(centre)
    return out, centres


def _visible_box(rgba: np.ndarray, x: float, y: float, height: float, w: int, h: int
                 ) -> tuple[float, float, float, float] | None:
    """The opaque part (alpha > 25 %) of a cutout pasted with its base centre at (x, y), as ``_paste`` scales it."""
    oh, ow = rgba.shape[:2]
    nh = max(4, int(round(height)))
    nw = max(2, int(round(ow * nh / oh)))
    x0, y0 = int(round(x - nw / 2)), int(round(y - nh))
    alpha = rgba[..., 3] > 64
    cols, rows = np.flatnonzero(alpha.any(0)), np.flatnonzero(alpha.any(1))
    if not len(cols):
        return None
    bx1, bx2 = x0 + cols[0] * nw / ow, x0 + (cols[-1] + 1) * nw / ow
    by1, by2 = y0 + rows[0] * nh / oh, y0 + (rows[-1] + 1) * nh / oh
    cx1, cy1, cx2, cy2 = max(0.0, bx1), max(0.0, by1), min(float(w), bx2), min(float(h), by2)
    # A cone cut by the frame edge stays a cone only if most of it shows.
    if cx2 - cx1 >= 2 and cy2 - cy1 >= 3 and (cx2 - cx1) * (cy2 - cy1) >= 0.5 * (bx2 - bx1) * (by2 - by1):
        return (cx1, cy1, cx2, cy2)
    return None


def paste_distractors(scene: np.ndarray, cutouts: Sequence[Cutout], rng: np.random.Generator, *, max_items: int = 4) -> np.ndarray:
    """Paste things that are not cones (hard negatives), with the same masks and layout.

    Three kinds: a cone-shaped mask filled with texture from elsewhere in the scene (the paste
    seam alone must not mean "road work"), a plain coloured blob shaped like a sign, car or bin
    (orange is not enough), and a grey, flat panel (road furniture).
    """
    h, w = scene.shape[:2]
    out = scene.copy()
    n = int(rng.integers(1, max_items + 1))
    for x, y, height in _placements(h, w, n, rng, row=rng.random() < 0.4):
        kind = rng.random()
        if kind < 0.45:
            mask = cutouts[int(rng.integers(len(cutouts)))].rgba[..., 3]
            mh, mw = mask.shape
            sy = int(rng.integers(0, max(1, h - mh)))
            sx = int(rng.integers(0, max(1, w - mw)))
            patch = scene[sy : sy + mh, sx : sx + mw]
            if patch.shape[:2] != mask.shape:
                continue
            rgba = np.dstack([patch, mask])
        else:
            rgba = _blob(rng, orange=kind < 0.8)
        _paste(out, rgba, x, y, height * rng.uniform(0.6, 1.4), rng, match=True)
    return out


def _blob(rng: np.random.Generator, *, orange: bool) -> np.ndarray:
    """A flat-coloured rectangle or ellipse with soft edges (RGBA, about 64 px tall)."""
    hh = 64
    ww = int(hh * rng.uniform(0.6, 2.5))
    if orange:
        color = (int(rng.integers(200, 256)), int(rng.integers(60, 150)), int(rng.integers(0, 60)))
    else:
        g = int(rng.integers(60, 220))
        color = (g, g, int(np.clip(g + rng.integers(-20, 20), 0, 255)))
    rgb = np.empty((hh, ww, 3), np.uint8)
    rgb[:] = color
    rgb = np.clip(rgb.astype(np.float32) * rng.uniform(0.8, 1.1, size=(hh, 1, 1)), 0, 255).astype(np.uint8)
    mask = PILImage.new("L", (ww, hh), 0)
    draw = ImageDraw.Draw(mask)
    if rng.random() < 0.5:
        draw.ellipse([2, 2, ww - 3, hh - 3], fill=255)
    else:
        draw.rectangle([2, 2, ww - 3, hh - 3], fill=255)
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.5)))
    return np.dstack([rgb, alpha])


def _paste(
    canvas: np.ndarray, rgba: np.ndarray, x: float, y_base: float, height: float, rng: np.random.Generator, *, match: bool
) -> tuple[float, float] | None:
    """Alpha-blend ``rgba`` scaled to ``height`` px with its base centre at (x, y_base), in place.

    With ``match`` the object's brightness moves part of the way to the local background's, so a
    sunlit stock cone does not glow in a dusk frame. Returns the pasted centre, or None if it
    fell outside the frame.
    """
    H, W = canvas.shape[:2]
    oh, ow = rgba.shape[:2]
    nh = max(4, int(round(height)))
    nw = max(2, int(round(ow * nh / oh)))
    im = PILImage.fromarray(rgba, "RGBA").resize((nw, nh), PILImage.BILINEAR)
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    obj = np.asarray(im, dtype=np.float32)
    x1 = int(round(x - nw / 2))
    y1 = int(round(y_base - nh))
    ox1, oy1 = max(0, -x1), max(0, -y1)
    ox2, oy2 = min(nw, W - x1), min(nh, H - y1)
    if ox2 - ox1 < 2 or oy2 - oy1 < 2:
        return None
    obj = obj[oy1:oy2, ox1:ox2]
    region = canvas[y1 + oy1 : y1 + oy2, x1 + ox1 : x1 + ox2].astype(np.float32)
    rgb, alpha = obj[..., :3], obj[..., 3:4] / 255.0
    if match:
        fg = float((rgb * alpha).sum() / max(alpha.sum() * 3, 1e-6))
        bg = float(region.mean())
        gain = math.sqrt(max(bg, 8.0) / max(fg, 8.0)) * rng.uniform(0.85, 1.15)
        rgb = rgb * float(np.clip(gain, 0.45, 1.4))
    blended = region * (1 - alpha) + np.clip(rgb, 0, 255) * alpha
    canvas[y1 + oy1 : y1 + oy2, x1 + ox1 : x1 + ox2] = blended.astype(np.uint8)
    return (x1 + (ox1 + ox2) / 2, y1 + (oy1 + oy2) / 2)
