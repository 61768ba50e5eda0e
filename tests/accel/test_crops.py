"""The verifier's crops on the torch device: the pixels Pillow cuts on the CPU, for a batch of images at once."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from workzone.accel.crops import crop_windows, crops_like_pillow  # noqa: E402
from workzone.verified_evidence import candidate_crops  # noqa: E402


def _images(rng: np.random.Generator) -> list[np.ndarray]:
    """Noise and smooth ramps, small and large (above the 640-px training side), several of one size."""
    out = []
    for h, w in [(120, 200), (120, 200), (75, 61), (900, 1200), (480, 640), (33, 800)]:
        px = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if len(out) % 2:
            px = np.cumsum(px, axis=1, dtype=np.uint64).astype(np.uint8)  # wrapping ramps: every level, sharp edges
        out.append(px)
    return out


def _boxes(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """Boxes anywhere, from a pixel to most of the image, some past its edges."""
    x1, y1 = rng.uniform(-0.1 * w, w, n), rng.uniform(-0.1 * h, h, n)
    bw, bh = rng.uniform(0.5, 0.6 * w, n), rng.uniform(0.5, 0.6 * h, n)
    return np.stack([x1, y1, x1 + bw, y1 + bh], 1)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="needs CUDA (runs on the GPU machine)"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_side", [None, 640])
def test_device_crops_are_the_pixels_pillow_cuts(max_side, device):
    rng = np.random.default_rng(7)
    images = _images(rng)
    counts = [8, 3, 1, 8, 5, 2]
    boxes = [_boxes(rng, px.shape[0], px.shape[1], n) for px, n in zip(images, counts)]
    want = np.concatenate([candidate_crops(px, b, size=96, context=2.0, max_side=max_side)
                           for px, b in zip(images, boxes)])
    owner = np.repeat(np.arange(len(images)), counts)
    heights = np.array([px.shape[0] for px in images])[owner]
    widths = np.array([px.shape[1] for px in images])[owner]
    windows = crop_windows(np.concatenate(boxes), heights, widths, context=2.0, max_side=max_side)
    tensors = [torch.from_numpy(px).permute(2, 0, 1).contiguous().to(device) for px in images]
    got = crops_like_pillow(tensors, owner, windows, 96)
    assert got.shape == want.shape == (sum(counts), 3, 96, 96) and got.device.type == device
    # Pillow's fixed-point filter reproduced: every sample equal, not just close (float64 sums are exact on any BLAS).
    assert np.array_equal(got.cpu().numpy(), np.round(want * 255.0))


def test_windows_past_the_image_are_black_and_a_shuffled_owner_order_is_kept():
    a = np.full((40, 60, 3), 200, np.uint8)
    b = np.zeros((30, 30, 3), np.uint8)
    b[:, :15] = 90
    boxes = np.array([[0.0, 0, 30, 30], [50, 30, 60, 40], [0, 0, 30, 30]])
    owner = np.array([1, 0, 0])  # not grouped by image
    sizes = np.array([[30, 30], [40, 60], [40, 60]])
    windows = crop_windows(boxes, sizes[:, 0], sizes[:, 1], context=2.0)
    got = crops_like_pillow([torch.from_numpy(p).permute(2, 0, 1).contiguous() for p in (a, b)], owner, windows, 16)
    for i, (o, box) in enumerate(zip(owner, boxes)):
        ref = candidate_crops((a, b)[o], box[None], size=16, context=2.0)[0] * 255.0
        assert np.abs(got[i].numpy() - ref).max() < 1e-3
    # The corner box's window reaches past the image's bottom-right corner: zero fill there, the image elsewhere.
    assert float(got[1, :, :4, :4].max()) == 200.0 and float(got[1, :, -3:, -3:].max()) == 0.0


def test_no_windows_gives_an_empty_batch():
    windows = crop_windows(np.zeros((0, 4)), np.zeros(0), np.zeros(0), context=2.0)
    out = crops_like_pillow([torch.zeros((3, 8, 8), dtype=torch.uint8)], np.zeros(0, np.int64), windows, 16)
    assert out.shape == (0, 3, 16, 16)
