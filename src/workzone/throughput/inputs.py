"""JPEG inputs for benchmarks, synthesised at run time.

The subnet sends 224 x 224 JPEGs at quality 75; cameras send larger frames. Inputs are random crops,
mirrors and brightness changes of the given sample images (the repository's ``samples/``), so every
buffer differs (no decoder cache effects) yet looks like street scenes. Without sample images, smooth
random colour fields are used.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image as PILImage

__all__ = ["synth_jpegs", "sample_images"]


def sample_images(folder: str | Path) -> list[np.ndarray]:
    """RGB arrays of the ``*.jpg`` / ``*.png`` files in ``folder`` (empty when there are none)."""
    folder = Path(folder)
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder.is_dir() else []
    return [np.asarray(PILImage.open(p).convert("RGB")) for p in paths]


def synth_jpegs(n: int, size: tuple[int, int], *, quality: int = 75, seed: int = 0,
                sources: Sequence[np.ndarray] = ()) -> list[bytes]:
    """``n`` distinct baseline JPEGs of ``size`` (width, height).

    Args:
        n: how many.
        size: (width, height) of each.
        quality: JPEG quality (the subnet's is 75).
        seed: random seed (same seed, same bytes).
        sources: RGB images to crop from; random colour fields when empty.

    Examples:
        >>> blobs = synth_jpegs(2, (64, 48))
        >>> len(blobs), blobs[0][:2]
        (2, b'\\xff\\xd8')
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if sources:
            src = sources[int(rng.integers(len(sources)))]
            h, w = src.shape[:2]
            cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = src[y:y + ch, x:x + cw]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = np.clip(crop.astype(np.float32) * rng.uniform(0.7, 1.3), 0, 255).astype(np.uint8)
            im = PILImage.fromarray(np.ascontiguousarray(crop)).resize(size, PILImage.BILINEAR)
        else:
            small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            im = PILImage.fromarray(small).resize(size, PILImage.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out
