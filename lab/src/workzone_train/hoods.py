"""Dashcam hoods: make the bottom edge of the frame carry no label.

Why: in roadwork-v1 the car's hood at the bottom of the frame is a camera signature. WMaia9's US
clips (almost all road work) show a white hood, and so does CamVid's 0001TP dusk sequence (all
negative), while the stock photos show none. A classifier trained without CamVid learns "hood =
road work" and calls 0001TP positive; trained without WMaia9 it learns the reverse and misses US
work zones. Real users' dashcams show hoods in both classes.

So during training the bottom strip of dashcam frames (hood and nearest road) is cut off some of
the time, and bottom strips of other dashcam frames are pasted onto images of either class some of
the time: hood and no hood then occur in both classes. A fixed-fraction strip is used rather
than a segmented hood because hoods reflect the scene (per-pixel variance over a clip does not
separate them from the road).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from PIL import Image as PILImage

__all__ = ["clip_key", "dashcam_strips", "paste_strip", "crop_bottom", "context_crop"]


def clip_key(source: str, rel: str) -> str:
    """The clip a frame belongs to: its file name without the frame number.

    Examples:
        >>> clip_key("WMaia9-workzone", "images/wmaia9-workzone/clipend_los_angeles_f0268.jpg")
        'WMaia9-workzone/los_angeles'
        >>> clip_key("CamVid", "images/camvid/0001tp_006990.jpg")
        'CamVid/0001tp'
    """
    stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = re.sub(r"_f?\d+$", "", stem)
    return f"{source}/{re.sub(r'^clipend_', '', stem)}"


def dashcam_strips(
    keys: Sequence[str], pixels: Sequence[np.ndarray], *, min_frames: int = 8, per_clip: int = 4, frac: float = 0.14
) -> tuple[list[np.ndarray], set[int]]:
    """Bottom strips of dashcam frames, and which images are dashcam frames.

    A clip is a dashcam clip when it has at least ``min_frames`` frames of one size (stock photo
    collections have mixed sizes, or are not named by frame).

    Args:
        keys: clip key per image (:func:`clip_key`).
        pixels: uint8 RGB images, parallel to ``keys``.
        min_frames: fewest same-sized frames of a clip.
        per_clip: strips taken per clip (evenly spaced frames).
        frac: strip height as a fraction of the frame height.

    Returns:
        (strips, indices of the images that belong to a dashcam clip).
    """
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    strips: list[np.ndarray] = []
    dashcam: set[int] = set()
    for idx in groups.values():
        shapes = [pixels[i].shape for i in idx]
        shape = max(set(shapes), key=shapes.count)
        same = [i for i, s in zip(idx, shapes) if s == shape]
        if len(same) < min_frames:
            continue
        dashcam.update(same)
        for i in np.linspace(0, len(same) - 1, per_clip).round().astype(int):
            px = pixels[same[i]]
            strips.append(px[int(px.shape[0] * (1 - frac)) :].copy())
    return strips, dashcam


def paste_strip(image: np.ndarray, strip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paste a bottom strip onto ``image``, scaled to its width, the top edge feathered.

    The strip keeps its height relative to the frame it came from (scaled by 0.7-1.3), and its
    brightness moves part of the way to the image's, so a sunlit hood does not glow at dusk.
    """
    h, w = image.shape[:2]
    sh = int(np.clip(round(h * 0.14 * rng.uniform(0.7, 1.3)), 4, h // 3))
    s = np.asarray(PILImage.fromarray(strip).resize((w, sh), PILImage.BILINEAR), dtype=np.float32)
    if rng.random() < 0.5:
        s = s[:, ::-1]
    gain = float(np.clip(np.sqrt(max(float(image.mean()), 8.0) / max(float(s.mean()), 8.0)), 0.5, 1.3))
    alpha = np.clip(np.linspace(0.0, 4.0, sh, dtype=np.float32), 0.0, 1.0)[:, None, None]
    out = image.astype(np.float32)
    out[h - sh :] = out[h - sh :] * (1 - alpha) + np.clip(s * gain, 0, 255) * alpha
    return out.astype(np.uint8)


def crop_bottom(image: np.ndarray, rng: np.random.Generator, *, low: float = 0.08, high: float = 0.2) -> np.ndarray:
    """``image`` without its bottom ``low``..``high`` fraction (where a hood would be)."""
    h = image.shape[0]
    return image[: max(8, int(round(h * (1 - rng.uniform(low, high)))))]


def context_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The top of a dashcam work-zone frame (sky, buildings): a negative from the same camera.

    Why: trained without CamVid, the classifier called the top half of every UK street
    positive, because the only dashcam streets with buildings it had seen were US work zones.
    Showing it the buildings and sky of those same frames as negatives says that a street is not
    road work; only the objects are. Work-zone objects stand on the road, below the horizon, so
    the top 30-45 % of the frame rarely shows one (stock photos are not used: their unboxed
    barriers and workers are anywhere).
    """
    h = image.shape[0]
    return image[: max(16, int(h * rng.uniform(0.3, 0.45)))]
