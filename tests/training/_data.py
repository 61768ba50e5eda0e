"""A tiny labelled data set on disk (manifest.csv + boxes.csv + images) for the training tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def add_cone_photos(root: Path, rows: list[str], boxes: list[str], n: int, *, shape: tuple[int, int] = (48, 64),
                    prefix: str = "", source: Callable[[int], str] = lambda label: "TraCon", seed: int = 0) -> None:
    """Write ``n`` noise images, every second one with an orange block boxed as a cone, and list them.

    Args:
        root: data set folder (``images/`` is created).
        rows: manifest lines to append to (``path,label,split,source,notes``).
        boxes: boxes.csv lines to append to.
        n: images to write.
        shape: (height, width) of each image.
        prefix: file-name prefix.
        source: manifest source of an image, from its label.
        seed: noise seed.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(exist_ok=True)
    h, w = shape
    for i in range(n):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = i % 2
        if label:
            img[int(h * 0.3) : int(h * 0.85), int(w * 0.4) : int(w * 0.6)] = (240, 110, 20)
            boxes.append(f"images/{prefix}{i}.jpg,cone,0.5,0.58,0.3,0.55")
        Image.fromarray(img).save(root / "images" / f"{prefix}{i}.jpg")
        rows.append(f"images/{prefix}{i}.jpg,{label},train,{source(label)},")


def write_manifest(root: Path, rows: list[str], boxes: list[str]) -> Path:
    """Write manifest.csv and boxes.csv under ``root``; returns the manifest path."""
    (root / "manifest.csv").write_text("\n".join(["path,label,split,source,notes", *rows]) + "\n")
    (root / "boxes.csv").write_text("\n".join(["path,class,cx,cy,w,h", *boxes]) + "\n")
    return root / "manifest.csv"
