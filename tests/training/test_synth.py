"""Tests of workzone_train.synth."""

import numpy as np

from workzone_train.data import ConeBox
from workzone_train.synth import cut_cone, paste_cones, paste_distractors


def _cone_photo() -> tuple[np.ndarray, ConeBox]:
    """A grey image with an orange triangle (a cone) inside the box."""
    img = np.full((200, 200, 3), 120, np.uint8)
    for y in range(60, 160):
        half = int((y - 60) * 0.3) + 3
        img[y, 100 - half : 100 + half] = (240, 110, 20)
    return img, ConeBox("x.jpg", cx=0.5, cy=0.55, w=0.4, h=0.55)


def test_cut_cone_mask_is_on_the_cone() -> None:
    img, box = _cone_photo()
    cut = cut_cone(img, box)
    assert cut is not None
    rgba = cut.rgba
    alpha = rgba[..., 3].astype(float) / 255
    orange = (rgba[..., 0] > 200) & (rgba[..., 2] < 60)
    assert alpha[orange].mean() > 0.6
    assert alpha[~orange].mean() < 0.3


def test_cut_cone_rejects_boxes_on_the_border_or_tiny() -> None:
    img, _ = _cone_photo()
    assert cut_cone(img, ConeBox("x", 0.05, 0.5, 0.2, 0.5)) is None
    assert cut_cone(img, ConeBox("x", 0.5, 0.5, 0.02, 0.03)) is None


def test_paste_cones_inside_frame_and_changes_lower_half() -> None:
    img, box = _cone_photo()
    cut = cut_cone(img, box)
    scene = np.full((240, 320, 3), 60, np.uint8)
    for seed in range(20):
        out, centres = paste_cones(scene, [cut], np.random.default_rng(seed))
        assert out.shape == scene.shape and out.dtype == np.uint8
        assert centres
        for x, y in centres:
            assert 0 <= x < 320 and 0 <= y < 240
            assert y > 240 * 0.3  # on the road, below the horizon
        changed = np.abs(out.astype(int) - scene).sum(axis=2) > 0
        assert changed.any()
        assert changed[: int(240 * 0.3)].sum() < changed.sum() * 0.2


def test_paste_distractors_keeps_shape() -> None:
    img, box = _cone_photo()
    cut = cut_cone(img, box)
    scene = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    out = paste_distractors(scene, [cut], np.random.default_rng(2))
    assert out.shape == scene.shape and out.dtype == np.uint8
