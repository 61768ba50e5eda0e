"""A contact sheet of crop candidates, for looking at what a model decided (never for committing: most of
../shared's sources grant no redistribution)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

__all__ = ["box_tile", "save_sheet"]


def box_tile(path: Path, box: tuple[float, float, float, float], label: str, tile: int = 128,
             outline: bool = False) -> Image.Image:
    """The box (x1, y1, x2, y2 normalised to the image) with its context, 1.5 x its longer side plus 8 px each way,
    as a ``tile`` x ``tile`` square with ``label`` written in its corner; ``outline`` draws the box itself (for a
    person labelling the candidate: the context around a small box holds other objects)."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2 * w, (y0 + y1) / 2 * h
    s = max((x1 - x0) * w, (y1 - y0) * h) * 1.5 + 8
    left, top = int(cx - s), int(cy - s)
    t = im.crop((left, top, int(cx + s), int(cy + s))).resize((tile, tile))
    draw = ImageDraw.Draw(t)
    if outline:
        k = tile / (int(cx + s) - left)
        draw.rectangle(((x0 * w - left) * k - 2, (y0 * h - top) * k - 2, (x1 * w - left) * k + 2,
                        (y1 * h - top) * k + 2), outline=(0, 255, 255), width=1)
    draw.text((2, 2), label, fill=(255, 255, 0))
    return t


def save_sheet(tiles: Sequence[Image.Image], out: Path, cols: int = 8) -> None:
    """The tiles (all one size) in rows of ``cols``, as one image."""
    side = tiles[0].size[0] if tiles else 128
    sheet = Image.new("RGB", (side * cols, side * max(1, -(-len(tiles) // cols))))
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % cols) * side, (k // cols) * side))
    sheet.save(out)
