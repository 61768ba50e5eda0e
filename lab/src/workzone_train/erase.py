"""Erase the work zone from a dashcam frame: same camera, same street, no road work (label 0).

Why: once CamVid is left out, the only dashcam city footage left is WMaia9, and all of it is road
work, so a model learns "US city street seen from a car" = road work and calls most unseen UK
streets positive. Erasing the work-zone colours (orange drums, cones, signs, barricade stripes and
fluorescent vests) from those same frames gives negatives that share the positives' camera, street
and hood, so the remaining difference between the classes is the objects themselves.

The fill is a masked (normalised) box blur at decreasing radii, with noise matched to the image, so
it leaves a soft smudge. Smudges alone must not mean "no road work", so :func:`decoy_erase` puts
smudges of the same kind on other images without changing their label.
"""

from __future__ import annotations

import numpy as np

__all__ = ["work_zone_mask", "fill_masked", "erase_work_zone", "decoy_erase"]


def _hsv(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of a uint8 RGB image."""
    x = pixels.astype(np.float32) / 255.0
    mx, mn = x.max(axis=2), x.min(axis=2)
    delta = mx - mn
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    hue = np.where(delta > 0, hue, 0.0)
    sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
    return hue, sat, mx


def _box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, edges clamped; x is (H, W) or (H, W, C) float32."""
    if r <= 0:
        return x
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float64)
        n = x.shape[axis]
        hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        x = ((hi - lo) / (2 * r + 1)).astype(np.float32)
    return x


def work_zone_mask(pixels: np.ndarray, *, grow: float = 0.012) -> np.ndarray:
    """Pixels in work-zone colours, grown a little: saturated red-orange to orange and fluorescent yellow-green.

    Args:
        pixels: uint8 RGB (H, W, 3).
        grow: dilation radius as a share of the longer side (covers white stripes and dark edges).

    Returns:
        bool (H, W).
    """
    hue, sat, val = _hsv(pixels)
    # Red-orange wraps past hue 0; cones in shade are dark but stay saturated.
    orange = ((hue <= 45) | (hue >= 340)) & (((sat >= 0.5) & (val >= 0.3)) | ((sat >= 0.65) & (val >= 0.12)))
    vest = (hue >= 55) & (hue <= 85) & (sat >= 0.55) & (val >= 0.55)
    mask = orange | vest
    # Specks (brake lights, a few noisy pixels) are not objects: keep only dense areas.
    dense = _box_blur(mask.astype(np.float32), max(1, round(0.004 * max(pixels.shape[:2])))) > 0.25
    # Grow (dilate) by a box blur: any masked pixel within the radius marks this one.
    return _box_blur(dense.astype(np.float32), max(1, round(grow * max(pixels.shape[:2])))) > 1e-3


def fill_masked(pixels: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fill ``mask`` from the pixels around it (normalised box blur, coarse to fine) plus matched noise."""
    if not mask.any():
        return pixels.copy()
    x = pixels.astype(np.float32)
    keep = (~mask).astype(np.float32)
    out = x.copy()
    side = max(pixels.shape[:2])
    filled = np.zeros(mask.shape, bool)
    # Coarse first, so every hole gets a value; then finer radii overwrite where enough context is near.
    for frac in (0.12, 0.05, 0.02):
        r = max(1, round(frac * side))
        w = _box_blur(keep, r)
        v = _box_blur(x * keep[..., None], r) / np.maximum(w, 1e-6)[..., None]
        ok = mask & (w > 0.25 if filled.any() else w > 0)
        out[ok] = v[ok]
        filled |= ok
    noise_sd = float(np.std(x[~mask] - _box_blur(x, 1)[~mask])) if (~mask).any() else 4.0
    out[mask] += rng.normal(0.0, 0.3 * noise_sd, size=(int(mask.sum()), 1)).astype(np.float32)
    # Feather the seam so the hole has no hard edge.
    soft = np.clip(_box_blur(mask.astype(np.float32), 2) * 1.5, 0, 1)[..., None]
    return np.clip(x * (1 - soft) + out * soft, 0, 255).astype(np.uint8)


def erase_work_zone(pixels: np.ndarray, rng: np.random.Generator, *, max_share: float = 0.35) -> np.ndarray | None:
    """The frame with its work-zone colours filled in, or None when there is nothing (or too much) to erase.

    Args:
        pixels: uint8 RGB dashcam frame that shows road work.
        rng: random generator for the fill noise.
        max_share: frames whose mask covers more than this share are skipped (the fill would be mush).
    """
    mask = work_zone_mask(pixels)
    share = float(mask.mean())
    if share <= 0.002 or share > max_share:
        return None
    return fill_masked(pixels, mask, rng)


def decoy_erase(pixels: np.ndarray, rng: np.random.Generator, *, n_max: int = 4) -> np.ndarray:
    """Smudge 1..n_max random blobs that avoid the work-zone colours (the label does not change)."""
    h, w = pixels.shape[:2]
    avoid = work_zone_mask(pixels)
    mask = np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, n_max + 1))):
        cy, cx = rng.uniform(0.3 * h, 0.95 * h), rng.uniform(0.05 * w, 0.95 * w)
        ry, rx = rng.uniform(0.02, 0.09) * h, rng.uniform(0.01, 0.06) * w
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    mask &= ~avoid
    return fill_masked(pixels, mask, rng)
