"""Procedurally drawn road-work props: drums, channelizers, barricades, barriers, signs, arrow boards.

Why: roadwork-v1 boxes only cones, but US and European work zones are mostly marked by other
things: orange-and-white drums, tall channelizer posts, striped barricades, plastic barrier
blocks, "ROAD WORK" diamonds, "men at work" triangles and arrow boards. A classifier trained
without WMaia9 (the only dashcam work zones) missed half of them. Drawing these props from their
standard designs (MUTCD / Vienna convention colours and proportions) and pasting them into
negative scenes teaches the things, not the cameras.

Every maker returns an RGBA uint8 array about ``px`` pixels tall with a soft alpha; the pasting
code scales, shades and places it. Shading across the width (a cylinder's cosine falloff) and
small colour jitter keep the props from all looking identical.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFilter

__all__ = ["PROPS", "BOX_TOP_FRACTION", "draw_prop"]

_WHITE = (236, 236, 230)
_BLACK = (25, 25, 25)


def _orange(rng: np.random.Generator) -> tuple[int, int, int]:
    return (int(rng.integers(215, 256)), int(rng.integers(70, 125)), int(rng.integers(0, 40)))


def _canvas(
    w: int, h: int, fill: tuple[int, int, int]
) -> tuple[PILImage.Image, PILImage.Image, ImageDraw.ImageDraw, ImageDraw.ImageDraw]:
    """An RGB canvas filled with ``fill``, an empty mask, and a drawer for each."""
    im, mask = PILImage.new("RGB", (w, h), fill), PILImage.new("L", (w, h), 0)
    return im, mask, ImageDraw.Draw(im), ImageDraw.Draw(mask)


def _sign_on_post(px: int, panel_bottom: float):  # noqa: ANN202 - the canvas tuple of _canvas plus the side
    """A sign canvas: ``px`` tall, half as wide, with a grey post from ``panel_bottom`` (fraction of the side) down."""
    side = int(px * 0.5)
    im, mask, d, m = _canvas(side, px, (110, 110, 110))
    half = max(1, side // 30)
    m.rectangle([side // 2 - half, int(side * panel_bottom), side // 2 + half, px - 1], fill=255)
    return side, im, mask, d, m


def _finish(im: PILImage.Image, mask: PILImage.Image, rng: np.random.Generator, *, cylinder: bool) -> np.ndarray:
    rgb = np.asarray(im, dtype=np.float32)
    w = rgb.shape[1]
    if cylinder:
        # Light falls off towards the sides of a round object.
        xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)
        rgb = rgb * (0.62 + 0.38 * np.sqrt(np.clip(1 - xs**2, 0, 1)))[None, :, None]
    rgb = rgb * rng.uniform(0.8, 1.05) + rng.normal(0, 4.0, size=rgb.shape)
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.8)))
    return np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), alpha])


def _drum(rng: np.random.Generator, px: int) -> np.ndarray:
    """A channelizing drum: 4-5 orange and white bands, a dark ballast ring at the base."""
    h, w = px, int(px * rng.uniform(0.55, 0.65))
    im, mask, d, m = _canvas(w, h, _orange(rng))
    m.rounded_rectangle([0, 0, w - 1, int(h * 0.9)], radius=max(1, w // 6), fill=255)
    m.rectangle([int(-w * 0.05), int(h * 0.86), w, h - 1], fill=255)
    bands = int(rng.integers(4, 6))
    for k in range(1, bands, 2):
        y0 = int(h * 0.08 + k * h * 0.78 / bands)
        d.rectangle([0, y0, w, y0 + int(h * 0.78 / bands)], fill=_WHITE)
    d.rectangle([0, int(h * 0.86), w, h], fill=_BLACK)
    return _finish(im, mask, rng, cylinder=True)


def _channelizer(rng: np.random.Generator, px: int) -> np.ndarray:
    """A tall, thin post with white reflective bands on a small black base."""
    h, w = px, max(6, int(px * rng.uniform(0.16, 0.24)))
    im, mask, d, m = _canvas(w, h, _orange(rng))
    m.rectangle([int(w * 0.2), 0, int(w * 0.8), h - 1], fill=255)
    m.rectangle([0, int(h * 0.92), w - 1, h - 1], fill=255)
    for y in (0.12, 0.3) if rng.random() < 0.6 else (0.1, 0.25, 0.4):
        d.rectangle([0, int(h * y), w, int(h * (y + 0.08))], fill=_WHITE)
    d.rectangle([0, int(h * 0.92), w, h], fill=_BLACK)
    return _finish(im, mask, rng, cylinder=True)


def _barricade(rng: np.random.Generator, px: int) -> np.ndarray:
    """A Type II/III barricade: 2-3 boards with diagonal orange/white stripes on white legs."""
    h, w = px, int(px * rng.uniform(1.3, 2.4))
    im, mask, d, m = _canvas(w, h, _WHITE)
    leg = max(2, w // 18)
    for x in (int(w * 0.12), int(w * 0.85)):
        m.rectangle([x, 0, x + leg, h - 1], fill=255)
    boards = int(rng.integers(2, 4))
    stripe = max(3, h // 7)
    colour = _orange(rng) if rng.random() < 0.85 else (200, 30, 30)
    for k in range(boards):
        y0 = int(h * (0.05 + k * 0.28))
        y1 = y0 + int(h * 0.18)
        m.rectangle([0, y0, w - 1, y1], fill=255)
        for x in range(-h, w + h, 2 * stripe):
            d.polygon([(x, y1), (x + stripe, y1), (x + stripe + (y1 - y0), y0), (x + (y1 - y0), y0)], fill=colour)
    return _finish(im, mask, rng, cylinder=False)


def _barrier(rng: np.random.Generator, px: int) -> np.ndarray:
    """Plastic water-filled barrier blocks, alternating orange/red and white, trapezoid profile."""
    h, w = px, int(px * rng.uniform(2.0, 4.0))
    im, mask, d, m = _canvas(w, h, _WHITE)
    n = max(2, int(w / (h * 1.1)))
    bw = w / n
    colour = _orange(rng) if rng.random() < 0.7 else (205, 35, 30)
    for k in range(n):
        x0, x1 = k * bw, (k + 1) * bw
        m.polygon([(x0 + bw * 0.08, 0), (x1 - bw * 0.08, 0), (x1, h - 1), (x0, h - 1)], fill=255)
        if k % 2 == 0:
            d.rectangle([x0, 0, x1, h], fill=colour)
    return _finish(im, mask, rng, cylinder=False)


def _diamond_sign(rng: np.random.Generator, px: int) -> np.ndarray:
    """An orange "ROAD WORK AHEAD"-style diamond with a black border and symbol, on a post."""
    side, im, mask, d, m = _sign_on_post(px, 0.5)
    c = side / 2
    diamond = [(c, 0), (side - 1, c), (c, side - 1), (0, c)]
    m.polygon(diamond, fill=255)
    d.polygon(diamond, fill=_BLACK)
    inset = max(2, side // 14)
    d.polygon([(c, inset), (side - 1 - inset, c), (c, side - 1 - inset), (inset, c)], fill=_orange(rng))
    _glyphs(d, rng, c, c, side * 0.42)
    return _finish(im, mask, rng, cylinder=False)


def _triangle_sign(rng: np.random.Generator, px: int) -> np.ndarray:
    """A European danger triangle (red border, white or yellow field) with a worker-like glyph, on a post."""
    side, im, mask, d, m = _sign_on_post(px, 0.87)
    tri_h = int(side * 0.87)
    tri = [(side / 2, 0), (side - 1, tri_h), (0, tri_h)]
    m.polygon(tri, fill=255)
    d.polygon(tri, fill=(200, 25, 30))
    b = max(2, side // 7)
    field = (250, 205, 30) if rng.random() < 0.3 else _WHITE
    d.polygon([(side / 2, b * 1.8), (side - 1 - b * 1.6, tri_h - b), (b * 1.6, tri_h - b)], fill=field)
    _glyphs(d, rng, side / 2, tri_h * 0.62, side * 0.28)
    return _finish(im, mask, rng, cylinder=False)


def _glyphs(d: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, size: float) -> None:
    """A worker-with-shovel pictogram, or two or three lines of "text", in black."""
    if rng.random() < 0.5:
        r = size * 0.12
        d.ellipse([cx - r, cy - size * 0.5, cx + r, cy - size * 0.5 + 2 * r], fill=_BLACK)
        d.line([(cx, cy - size * 0.25), (cx - size * 0.1, cy + size * 0.15)], fill=_BLACK, width=max(1, int(size * 0.14)))
        d.line([(cx - size * 0.1, cy + size * 0.15), (cx - size * 0.35, cy + size * 0.45)], fill=_BLACK, width=max(1, int(size * 0.1)))
        d.line([(cx - size * 0.1, cy + size * 0.15), (cx + size * 0.15, cy + size * 0.45)], fill=_BLACK, width=max(1, int(size * 0.1)))
        d.line([(cx, cy - size * 0.1), (cx + size * 0.4, cy + size * 0.1)], fill=_BLACK, width=max(1, int(size * 0.06)))
        d.polygon([(cx + size * 0.2, cy + size * 0.4), (cx + size * 0.5, cy + size * 0.3), (cx + size * 0.45, cy + size * 0.5)], fill=_BLACK)
    else:
        lines = int(rng.integers(2, 4))
        for k in range(lines):
            y = cy - size * 0.45 + k * size * 0.9 / lines
            half = size * rng.uniform(0.45, 0.7) * (1 if k == 0 else rng.uniform(0.6, 1.0))
            d.rectangle([cx - half, y, cx + half, y + size * 0.9 / lines * 0.6], fill=_BLACK)


def _arrow_board(rng: np.random.Generator, px: int) -> np.ndarray:
    """A trailer-mounted arrow board: black panel, amber lamps in an arrow, on a dark frame."""
    h = px
    w = int(h * rng.uniform(1.1, 1.5))
    im, mask, d, m = _canvas(w, h, (40, 40, 40))
    ph = int(h * 0.55)
    m.rectangle([0, 0, w - 1, ph], fill=255)
    m.rectangle([int(w * 0.45), ph, int(w * 0.55), h - 1], fill=255)
    m.rectangle([int(w * 0.15), int(h * 0.85), int(w * 0.85), h - 1], fill=255)
    d.rectangle([0, 0, w - 1, ph], fill=_BLACK)
    amber = (255, int(rng.integers(150, 200)), 30)
    r = max(1, h // 30)
    yc = ph / 2
    left = rng.random() < 0.5
    for k in range(7):
        x = w * (0.15 + 0.1 * k)
        d.ellipse([x - r, yc - r, x + r, yc + r], fill=amber)
    tip = w * (0.1 if left else 0.9)
    for k in (1, 2):
        dx = (1 if left else -1) * w * 0.1 * k
        for dy in (-1, 1):
            d.ellipse([tip + dx - r, yc + dy * ph * 0.17 * k - r, tip + dx + r, yc + dy * ph * 0.17 * k + r], fill=amber)
    return _finish(im, mask, rng, cylinder=False)


def _leitbake(rng: np.random.Generator, px: int) -> np.ndarray:
    """A European channelizing board (Leitbake): a tall white board with red diagonal stripes on a dark foot."""
    h, w = px, max(6, int(px * rng.uniform(0.22, 0.3)))
    im, mask, d, m = _canvas(w, h, _WHITE)
    m.rectangle([0, 0, w - 1, int(h * 0.86)], fill=255)
    m.rectangle([int(-w * 0.1), int(h * 0.86), w, h - 1], fill=255)
    red = (int(rng.integers(185, 225)), int(rng.integers(15, 45)), int(rng.integers(20, 50)))
    stripe = max(2, int(w * 0.45))
    slope = 1 if rng.random() < 0.5 else -1
    for y in range(-2 * w, int(h * 0.86), 2 * stripe):
        d.polygon([(0, y), (w, y + slope * w), (w, y + slope * w + stripe), (0, y + stripe)], fill=red)
    d.rectangle([0, int(h * 0.86), w, h], fill=_BLACK)
    return _finish(im, mask, rng, cylinder=False)


def _striped_beam(rng: np.random.Generator, px: int) -> np.ndarray:
    """A barrier beam (Absperrschranke): a red-and-white striped bar on two thin legs, maybe a warning lamp."""
    h, w = px, int(px * rng.uniform(1.8, 3.2))
    im, mask, d, m = _canvas(w, h, _WHITE)
    leg = max(2, w // 40)
    for x in (int(w * 0.08), int(w * 0.9)):
        m.rectangle([x, int(h * 0.3), x + leg, h - 1], fill=255)
        d.rectangle([x, int(h * 0.3), x + leg, h - 1], fill=(90, 90, 90))
    y0, y1 = int(h * 0.3), int(h * 0.3) + max(3, int(h * 0.16))
    m.rectangle([0, y0, w - 1, y1], fill=255)
    red = (int(rng.integers(185, 225)), int(rng.integers(15, 45)), int(rng.integers(20, 50)))
    seg = max(3, int(w / rng.integers(6, 12)))
    for x in range(0, w, 2 * seg):
        d.rectangle([x, y0, x + seg, y1], fill=red)
    if rng.random() < 0.5:
        r = max(2, int(h * 0.09))
        cx = int(w * rng.uniform(0.2, 0.8))
        m.ellipse([cx - r, y0 - 2 * r, cx + r, y0], fill=255)
        d.ellipse([cx - r, y0 - 2 * r, cx + r, y0], fill=(255, int(rng.integers(150, 210)), 20))
    return _finish(im, mask, rng, cylinder=False)


def _fence(rng: np.random.Generator, px: int) -> np.ndarray:
    """Temporary site fencing (Bauzaun): mesh panels in a metal frame on concrete feet."""
    h, w = px, int(px * rng.uniform(2.0, 4.0))
    im, mask, d, m = _canvas(w, h, (150, 150, 150))
    frame = (int(rng.integers(120, 190)),) * 3
    panels = max(1, int(w / (h * rng.uniform(1.2, 1.8))))
    pw = w / panels
    t = max(1, h // 40)
    for k in range(panels):
        x0, x1 = int(k * pw), int((k + 1) * pw) - 1
        m.rectangle([x0, 0, x1, int(h * 0.9)], outline=255, width=2 * t)
        d.rectangle([x0, 0, x1, int(h * 0.9)], outline=frame, width=2 * t)
        step = max(3, int(h / rng.integers(8, 16)))
        for x in range(x0, x1, step):
            m.line([(x, 0), (x, int(h * 0.9))], fill=160, width=t)
        for y in range(0, int(h * 0.9), step):
            m.line([(x0, y), (x1, y)], fill=160, width=t)
        m.rectangle([x0 - int(pw * 0.05), int(h * 0.9), x0 + int(pw * 0.12), h - 1], fill=255)
        d.rectangle([x0 - int(pw * 0.05), int(h * 0.9), x0 + int(pw * 0.12), h - 1], fill=(170, 170, 165))
    if rng.random() < 0.5:
        # A red-and-white or orange plank along the bottom, common on city sites.
        y0 = int(h * rng.uniform(0.55, 0.75))
        m.rectangle([0, y0, w - 1, y0 + max(3, h // 10)], fill=255)
        colour = (205, 35, 30) if rng.random() < 0.6 else _orange(rng)
        seg = max(3, h // 5)
        d.rectangle([0, y0, w - 1, y0 + max(3, h // 10)], fill=_WHITE)
        for x in range(0, w, 2 * seg):
            d.rectangle([x, y0, x + seg, y0 + max(3, h // 10)], fill=colour)
    return _finish(im, mask, rng, cylinder=False)


def _panel_sign(rng: np.random.Generator, px: int) -> np.ndarray:
    """A temporary rectangular work-zone panel (yellow or orange, black text lines, maybe an arrow) on a post."""
    side, im, mask, d, m = _sign_on_post(px, 0.7)
    ph = int(side * 0.7)
    m.rectangle([0, 0, side - 1, ph], fill=255)
    field = (245, 205, 25) if rng.random() < 0.5 else _orange(rng)
    d.rectangle([0, 0, side - 1, ph], fill=_BLACK)
    b = max(1, side // 20)
    d.rectangle([b, b, side - 1 - b, ph - b], fill=field)
    _glyphs(d, rng, side / 2, ph / 2, ph * 0.7)
    return _finish(im, mask, rng, cylinder=False)


# name -> (maker, height relative to a cone at the same spot)
PROPS: dict[str, tuple[Callable[[np.random.Generator, int], np.ndarray], float]] = {
    "drum": (_drum, 1.3),
    "channelizer": (_channelizer, 1.6),
    "barricade": (_barricade, 1.4),
    "barrier": (_barrier, 1.0),
    "diamond_sign": (_diamond_sign, 3.2),
    "triangle_sign": (_triangle_sign, 3.0),
    "arrow_board": (_arrow_board, 3.0),
    "leitbake": (_leitbake, 1.5),
    "striped_beam": (_striped_beam, 1.3),
    "fence": (_fence, 2.4),
    "panel_sign": (_panel_sign, 3.0),
}

# The part of each drawn prop that its box covers, as a fraction of its height from the top: a sign's
# box is its panel, as in the real sign boxes, not the post below it.
BOX_TOP_FRACTION: dict[str, float] = {"diamond_sign": 0.5, "triangle_sign": 0.44, "panel_sign": 0.35, "arrow_board": 0.56}


def draw_prop(name: str, rng: np.random.Generator, px: int = 96) -> np.ndarray:
    """Draw prop ``name`` (a key of :data:`PROPS`) about ``px`` pixels tall, as RGBA uint8."""
    return PROPS[name][0](rng, px)
