"""Tests of workzone_train.augment."""

import numpy as np
import pytest

from workzone_train.augment import AugmentConfig, augment_image, random_crop_box


def _image(h: int = 120, w: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("seed", range(8))
def test_augment_shape_dtype_range(seed: int) -> None:
    x = augment_image(_image(), np.random.default_rng(seed), AugmentConfig(size=64))
    assert x.shape == (3, 64, 64)
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_augment_is_reproducible_from_the_seed() -> None:
    cfg = AugmentConfig(size=48)
    a = augment_image(_image(), np.random.default_rng([3, 1, 7]), cfg)
    b = augment_image(_image(), np.random.default_rng([3, 1, 7]), cfg)
    c = augment_image(_image(), np.random.default_rng([3, 1, 8]), cfg)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_no_augmentation_equals_the_inference_resize() -> None:
    from workzone.io.images import resize_for_model

    off = AugmentConfig(size=32, p_rotate=0, p_crop=0, p_hflip=0, resize_modes=(("squash", 1.0),), p_color=0, p_gray=0,
                        p_night=0, p_fog=0, p_rain=0, p_glare=0, p_resample=0, p_blur=0, p_noise=0, p_jpeg=0)
    img = _image()
    assert np.array_equal(augment_image(img, np.random.default_rng(0), off), resize_for_model(img, 32, "squash"))


@pytest.mark.parametrize(
    ("w", "h", "min_area", "points"),
    [(100, 50, 0.2, []), (640, 360, 0.2, [(600.0, 340.0)]), (300, 300, 0.5, [(5.0, 5.0), (295.0, 295.0)])],
)
def test_random_crop_box_inside_and_keeps_a_point(w: int, h: int, min_area: float, points: list) -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        x1, y1, x2, y2 = random_crop_box(w, h, rng, min_area=min_area, keep_points=points)
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        if points:
            assert any(x1 <= x < x2 and y1 <= y < y2 for x, y in points)
