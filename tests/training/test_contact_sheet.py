"""The lab's contact sheet: a box's tile holds the box's pixels at its centre, and the sheet lays tiles in rows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("workzone_train")
from workzone_train.contact_sheet import box_tile, save_sheet  # noqa: E402


def test_a_tile_is_centred_on_its_box_and_the_sheet_has_a_row_per_cols(tmp_path) -> None:
    px = np.zeros((200, 300, 3), np.uint8)
    px[90:110, 140:160] = (255, 0, 0)  # a red square in the middle of a black image
    path = tmp_path / "scene.png"
    Image.fromarray(px).save(path)
    tile = box_tile(path, (140 / 300, 90 / 200, 160 / 300, 110 / 200), "", tile=64)
    arr = np.asarray(tile)
    assert tile.size == (64, 64)
    assert tuple(arr[32, 32]) == (255, 0, 0)  # the box's centre is the tile's centre
    assert tuple(arr[2, 60]) == (0, 0, 0)  # with black context around it (1.5 x the box, +8 px)

    out = tmp_path / "sheet.png"
    save_sheet([tile] * 5, out, cols=2)
    assert Image.open(out).size == (128, 192)  # 5 tiles in rows of 2: three rows
