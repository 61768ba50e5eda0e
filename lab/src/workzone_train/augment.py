"""Training-time augmentation that mimics what the NATIX SN72 validator and real dashcams do.

Geometry (rotation, random crops, flips) runs on the full-resolution uint8 image with PIL; the
resize to the model's input then goes through :func:`workzone.io.images.resize_for_model`, the
same function inference uses, so train/serve skew in the resize is impossible. Photometric
changes (colour, low light, fog, rain, glare, noise, blur, JPEG, grey) run on the small output.

Every random choice draws from the ``numpy.random.Generator`` passed in, so a sample's
augmentation is fixed by (seed, epoch, index) whatever the number of loader workers.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFilter

from workzone.io.images import ResizeMode, resize_for_model

__all__ = ["AugmentConfig", "augment_image", "random_crop_box"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (the defaults are the shipped recipe's)."""

    size: int = 224
    p_rotate: float = 0.3
    max_rotate_deg: float = 20.0
    p_crop: float = 0.7
    min_crop_area: float = 0.2
    p_hflip: float = 0.5
    # Resize modes drawn for the final step; squash is the shipped inference mode, the others make
    # the model robust to letterboxed or centre-cropped callers (the validator centre-crops).
    resize_modes: tuple[tuple[str, float], ...] = (("squash", 0.65), ("letterbox", 0.2), ("center_crop", 0.15))
    p_color: float = 0.8
    p_gray: float = 0.08
    p_night: float = 0.15
    p_fog: float = 0.1
    p_rain: float = 0.07
    p_glare: float = 0.07
    p_resample: float = 0.2
    p_blur: float = 0.15
    p_noise: float = 0.15
    p_jpeg: float = 0.35


def random_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    *,
    min_area: float,
    keep_points: Sequence[tuple[float, float]] = (),
    tries: int = 10,
) -> tuple[int, int, int, int]:
    """Pick a random crop of ``min_area``..100 % of the image that keeps one of ``keep_points``.

    Args:
        width: image width in pixels.
        height: image height in pixels.
        rng: random generator.
        min_area: smallest crop area as a fraction of the image.
        keep_points: (x, y) pixel points of which at least one must stay inside (the cones that
            make a positive positive); empty means any crop will do.
        tries: attempts before falling back to the full image.

    Returns:
        (x1, y1, x2, y2) crop box inside the image.

    Examples:
        >>> x1, y1, x2, y2 = random_crop_box(100, 50, np.random.default_rng(0), min_area=0.5)
        >>> 0 <= x1 < x2 <= 100 and 0 <= y1 < y2 <= 50
        True
    """
    for _ in range(tries):
        area = rng.uniform(min_area, 1.0) * width * height
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3))) * width / height
        cw = int(round(math.sqrt(area * aspect)))
        ch = int(round(math.sqrt(area / aspect)))
        if not (8 <= cw <= width and 8 <= ch <= height):
            continue
        x1 = int(rng.integers(0, width - cw + 1))
        y1 = int(rng.integers(0, height - ch + 1))
        if not keep_points or any(x1 <= x < x1 + cw and y1 <= y < y1 + ch for x, y in keep_points):
            return x1, y1, x1 + cw, y1 + ch
    return 0, 0, width, height


def augment_image(
    pixels: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    *,
    keep_points: Sequence[tuple[float, float]] = (),
    min_crop_area: float | None = None,
) -> np.ndarray:
    """Augment one image and resize it to the model input.

    Args:
        pixels: uint8 RGB array (H, W, 3).
        rng: random generator.
        cfg: augmentation settings.
        keep_points: (x, y) pixel points of which one must survive cropping (cone centres).
        min_crop_area: overrides ``cfg.min_crop_area`` (larger for positives without boxes, whose
            road work might be cropped away).

    Returns:
        float32 array (3, size, size) in [0, 1].
    """
    im = PILImage.fromarray(pixels)
    points = list(keep_points)
    if rng.random() < cfg.p_rotate:
        # Rotate about the centre without expanding: the black corners are what the validator
        # produces too. Points rotate with the image so that crops still find the cones.
        angle = float(rng.uniform(-cfg.max_rotate_deg, cfg.max_rotate_deg))
        im = im.rotate(angle, resample=PILImage.BILINEAR, fillcolor=(0, 0, 0))
        points = _rotate_points(points, angle, im.width, im.height)
    if rng.random() < cfg.p_crop:
        area = cfg.min_crop_area if min_crop_area is None else min_crop_area
        box = random_crop_box(im.width, im.height, rng, min_area=area, keep_points=points)
        im = im.crop(box)
    if rng.random() < cfg.p_hflip:
        im = im.transpose(PILImage.FLIP_LEFT_RIGHT)
    modes = [m for m, _ in cfg.resize_modes]
    probs = np.array([p for _, p in cfg.resize_modes], dtype=np.float64)
    mode: ResizeMode = modes[int(rng.choice(len(modes), p=probs / probs.sum()))]  # type: ignore[assignment]
    x = resize_for_model(np.asarray(im), cfg.size, mode)
    return _photometric(x, rng, cfg)


def _rotate_points(points: list[tuple[float, float]], angle: float, w: int, h: int) -> list[tuple[float, float]]:
    # PIL rotates counter-clockwise for positive angles, in image coordinates (y down).
    a = math.radians(angle)
    cx, cy = w / 2, h / 2
    out = []
    for x, y in points:
        dx, dy = x - cx, y - cy
        out.append((cx + dx * math.cos(a) + dy * math.sin(a), cy - dx * math.sin(a) + dy * math.cos(a)))
    return out


def _photometric(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Colour and degradation changes on a (3, S, S) float image in [0, 1]."""
    if rng.random() < cfg.p_color:
        grey = x.mean(axis=0, keepdims=True)
        x = grey + (x - grey) * rng.uniform(0.5, 1.5)  # saturation
        x = (x - x.mean()) * rng.uniform(0.7, 1.3) + x.mean()  # contrast
        x = x * rng.uniform(0.75, 1.25)  # brightness
        x = x * rng.uniform(0.92, 1.08, size=(3, 1, 1))  # white balance
    if rng.random() < cfg.p_night:
        # Night: dark, gamma-crushed, blue-shifted, noisy, with headlight-like hot spots kept.
        x = np.clip(x, 0, 1) ** rng.uniform(1.6, 2.8) * rng.uniform(0.35, 0.7)
        x = x * np.array([0.85, 0.92, 1.1], dtype=np.float32)[:, None, None]
        x = x + rng.normal(0, rng.uniform(0.01, 0.04), size=x.shape)
    if rng.random() < cfg.p_fog:
        s = x.shape[-1]
        # Haze thickens towards the horizon (top of the frame).
        depth = np.linspace(1.0, 0.3, s, dtype=np.float32)[None, :, None]
        t = rng.uniform(0.3, 0.75) * depth
        x = x * (1 - t) + rng.uniform(0.7, 0.95) * t
    if rng.random() < cfg.p_rain:
        x = _rain(x, rng)
    if rng.random() < cfg.p_glare:
        s = x.shape[-1]
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        gx, gy = rng.uniform(0, s), rng.uniform(0, s * 0.6)
        r = rng.uniform(0.1, 0.4) * s
        x = x + rng.uniform(0.4, 1.0) * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * r * r))[None]
    if rng.random() < cfg.p_gray:
        x = np.repeat(x.mean(axis=0, keepdims=True), 3, axis=0)
    x = np.clip(x, 0, 1).astype(np.float32)
    if rng.random() < cfg.p_resample:
        x = _resample(x, rng.uniform(0.25, 0.7))
    if rng.random() < cfg.p_blur:
        x = _pil_op(x, lambda im: im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.8)))))
    if rng.random() < cfg.p_noise:
        x = np.clip(x + rng.normal(0, rng.uniform(0.01, 0.06), size=x.shape), 0, 1).astype(np.float32)
    if rng.random() < cfg.p_jpeg:
        q = int(rng.choice([75, 75, int(rng.integers(40, 95))]))
        x = _pil_op(x, lambda im: _jpeg(im, q))
    return x


def _rain(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = x.shape[-1]
    layer = PILImage.new("L", (s, s), 0)
    draw = ImageDraw.Draw(layer)
    slant = rng.uniform(-0.3, 0.3)
    for _ in range(int(rng.integers(60, 250))):
        x0, y0 = rng.uniform(0, s), rng.uniform(0, s)
        length = rng.uniform(4, 14)
        draw.line([(x0, y0), (x0 + slant * length, y0 + length)], fill=int(rng.integers(90, 200)), width=1)
    streaks = np.asarray(layer, dtype=np.float32)[None] / 255.0
    return x * rng.uniform(0.75, 0.95) + streaks * 0.5


def _resample(x: np.ndarray, factor: float) -> np.ndarray:
    def op(im: PILImage.Image) -> PILImage.Image:
        small = (max(8, int(im.width * factor)), max(8, int(im.height * factor)))
        return im.resize(small, PILImage.BILINEAR).resize(im.size, PILImage.BILINEAR)

    return _pil_op(x, op)


def _jpeg(im: PILImage.Image, quality: int) -> PILImage.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return PILImage.open(buf).convert("RGB")


def _pil_op(x: np.ndarray, op) -> np.ndarray:  # noqa: ANN001 - a PIL image -> PIL image callable
    im = PILImage.fromarray((x.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8))
    return (np.asarray(op(im), dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()
