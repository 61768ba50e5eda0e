"""The JPEG round trip as tensors gives the pixels of Pillow's save (quality q, 4:2:0) and load."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

torch = pytest.importorskip("torch")

from workzone.accel.jpeg_roundtrip import jpeg_roundtrip, quant_tables  # noqa: E402


def _pillow(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    PILImage.fromarray(a).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(PILImage.open(buf).convert("RGB"))


def _street_like(w: int, h: int, seed: int) -> np.ndarray:
    # Smooth colour fields plus noise: edges, gradients and texture, like photographs.
    rng = np.random.default_rng(seed)
    base = np.asarray(PILImage.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize((w, h), PILImage.BICUBIC))
    return np.clip(base.astype(int) + rng.integers(-25, 26, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("w, h, quality", [(320, 240, 72), (320, 180, 72), (240, 320, 72), (61, 37, 72),
                                           (17, 9, 72), (33, 320, 90), (224, 224, 40), (1, 1, 72)])
def test_roundtrip_is_bit_exact_with_pillow(w, h, quality):
    a = _street_like(w, h, w + h + quality)
    got = jpeg_roundtrip(torch.from_numpy(a.copy()).permute(2, 0, 1)[None], quality)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got.astype(np.uint8), _pillow(a, quality))


def test_a_batch_is_the_images_one_by_one():
    imgs = [_street_like(48, 32, s) for s in range(3)]
    batch = jpeg_roundtrip(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2), 72)
    for a, got in zip(imgs, batch):
        assert np.array_equal(got.permute(1, 2, 0).numpy().astype(np.uint8), _pillow(a, 72))


def test_the_block_transforms_run_once_per_batch_for_every_plane(monkeypatch):
    # Luma and both chroma planes share one pass of each transform (its ~300 operators are a kernel launch
    # each on a GPU: a transform per plane tripled the fixed cost of a served batch of a few images).
    import workzone.accel.jpeg_roundtrip as jr
    from tests.accel.dispatch_count import counted_ops

    passes = []
    real = jr._fdct_pass
    monkeypatch.setattr(jr, "_fdct_pass", lambda *a: passes.append(1) or real(*a))
    x = torch.from_numpy(np.stack([_street_like(48, 32, s) for s in range(4)])).permute(0, 3, 1, 2)
    with counted_ops() as one:
        jpeg_roundtrip(x[:1], 72)
    with counted_ops() as four:
        jpeg_roundtrip(x, 72)
    assert len(passes) == 2 * 2  # two forward passes (rows, columns) per call, all planes together
    assert abs(one[0] - four[0]) <= 4 and four[0] < 450  # 928 with a transform per plane


def test_quality_outside_range_is_refused():
    with pytest.raises(ValueError, match="1..100"):
        quant_tables(0)
