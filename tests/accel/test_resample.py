"""Pillow's resampling as matrices: the same pixels as PIL.Image.resize, sample for sample."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

torch = pytest.importorskip("torch")

from workzone.accel.resample import letterbox_geometry, letterbox_like_pillow, resize_like_pillow  # noqa: E402
from workzone.io.images import resize_for_model  # noqa: E402

_PIL = {"bilinear": PILImage.BILINEAR, "lanczos": PILImage.LANCZOS}


def _tensor(a: np.ndarray):
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float()


@pytest.mark.parametrize("src, dst, kind", [
    ((480, 360), (320, 240), "lanczos"),     # the training copies' shrink of the commonest dev size
    ((640, 640), (320, 320), "lanczos"),
    ((61, 37), (17, 11), "lanczos"),
    ((320, 240), (384, 288), "bilinear"),    # the letterbox's enlargement
    ((224, 224), (384, 384), "bilinear"),
    ((50, 7), (13, 7), "bilinear"),          # one axis only
])
def test_resize_equals_pillow(src, dst, kind):
    rng = np.random.default_rng(sum(src) + sum(dst))
    a = rng.integers(0, 256, (src[1], src[0], 3), dtype=np.uint8)
    want = np.asarray(PILImage.fromarray(a).resize(dst, _PIL[kind]))
    got = resize_like_pillow(_tensor(a), dst[1], dst[0], kind)[0].permute(1, 2, 0).numpy()
    assert got.shape == want.shape
    assert np.array_equal(got.astype(np.uint8), want)


@pytest.mark.parametrize("w, h", [(320, 240), (240, 320), (320, 180), (384, 384), (100, 37)])
def test_letterbox_equals_resize_for_model(w, h):
    rng = np.random.default_rng(w * h)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    want = resize_for_model(a, 384, "letterbox") * 255.0
    got = letterbox_like_pillow(_tensor(a), 384)[0].numpy()
    assert np.abs(got - want).max() < 1e-3


def test_letterbox_geometry_centres_the_image():
    nw, nh, left, top = letterbox_geometry(480, 360, 384)
    assert (nw, nh) == (384, 288) and left == 0 and top == (384 - 288) // 2
