"""The helpers the lab's candidate scripts share: P(work-zone object), box heights in pixels, candidates by image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from workzone_train.verifier import VERIFIER_CLASSES, CropItem, candidates_by_image
from workzone_train.verifier_tune import ImageHeights, p_object


def test_p_object_leaves_out_none_and_other_signs() -> None:
    probs = np.zeros(len(VERIFIER_CLASSES))
    probs[VERIFIER_CLASSES.index("cone")] = 0.5
    probs[VERIFIER_CLASSES.index("none")] = 0.3
    probs[VERIFIER_CLASSES.index("sign_other")] = 0.2
    assert p_object(probs) == 0.5


def test_heights_are_in_the_images_pixels_and_each_image_is_read_once(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 200)).save(path)
    heights = ImageHeights()
    item = CropItem("a", path, "S", (0.1, 0.25, 0.2, 0.75), "", "candidate")
    assert heights(item) == 100.0
    path.unlink()  # a second box of the same image needs no second read
    assert heights(CropItem("a", path, "S", (0.0, 0.0, 1.0, 0.1), "", "candidate")) == 20.0


def test_candidates_are_grouped_by_image_and_only_judged_ones_count() -> None:
    items = [CropItem("a", Path("a"), "S", (0, 0, 1, 1), "", "candidate"),
             CropItem("a", Path("a"), "S", (0, 0, 1, 1), "cone", "truth"),
             CropItem("b", Path("b"), "S", (0, 0, 1, 1), "", "candidate"),
             CropItem("a", Path("a"), "S", (0, 0, 1, 1), "", "candidate")]
    probs = {0: np.ones(2), 1: np.ones(2), 3: np.ones(2)}  # item 2 was not judged
    assert candidates_by_image(items, probs) == {"a": [0, 3]}
