"""Device decode and resize: the CPU path (CI has no GPU), checked against the project's decoder."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.conftest import encode, solid  # noqa: E402
from workzone.accel.decode import DeviceDecoder, jpeg_header, resize_batch  # noqa: E402
from workzone.accel.device_image import DeviceImage  # noqa: E402
from workzone.errors import InvalidImageError  # noqa: E402
from workzone.io.images import decode_image, resize_for_model  # noqa: E402
from workzone.types import Image  # noqa: E402


def _scene(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 255], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("data,expected", [
    (encode(solid((10, 20, 30), (48, 40))), (48, 40, 3, False)),
    (encode(solid((10, 20, 30), (64, 32)), progressive=True), (64, 32, 3, True)),
    (encode(solid((10, 20, 30), (64, 32)), fmt="PNG"), None),
    (b"\xff\xd8\xff", None),
    (b"", None),
])
def test_jpeg_header_reads_size_and_kind(data, expected):
    head = jpeg_header(data)
    assert (head[:4] if head else None) == expected


def test_jpeg_header_sees_exif():
    from PIL import Image as PILImage

    im = PILImage.fromarray(solid((1, 2, 3), (40, 30)))
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    import io

    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    assert jpeg_header(buf.getvalue())[4] is True


def test_cpu_decoder_matches_decode_image_for_jpeg_and_png():
    blobs = [encode(_scene(64, 48)), encode(_scene(50, 70, 1), fmt="PNG")]
    dec = DeviceDecoder("cpu")
    try:
        got = dec.decode(blobs)
    finally:
        dec.close()
    for img, blob in zip(got, blobs):
        assert np.array_equal(img.pixels, decode_image(blob).pixels)


def test_a_bad_item_is_named_in_the_error():
    dec = DeviceDecoder("cpu")
    try:
        with pytest.raises(InvalidImageError, match="bad.jpg"):
            dec.decode([encode(_scene(32, 32)), b"\xff\xd8\xffnot really"], sources=["ok.jpg", "bad.jpg"])
    finally:
        dec.close()


@pytest.mark.parametrize("mode", ["squash", "letterbox", "center_crop"])
@pytest.mark.parametrize("wh,size", [((640, 480), 224), ((224, 224), 224), ((100, 60), 448)])
def test_resize_batch_matches_resize_for_model_within_one_level(mode, wh, size):
    px = _scene(*wh)
    x = resize_batch([Image(px), Image(px[:, ::-1].copy())], size, mode)
    assert x.shape == (2, 3, size, size) and x.dtype == torch.float32
    for i, arr in enumerate((px, px[:, ::-1].copy())):
        diff = np.abs(x[i].numpy() - resize_for_model(arr, size, mode)) * 255
        assert diff.max() <= 1.01
        assert diff.mean() < 0.3


def test_resize_batch_groups_mixed_sizes_and_keeps_order():
    a, b = _scene(80, 60, 1), _scene(30, 90, 2)
    x = resize_batch([Image(a), Image(b), Image(a)], 32, "letterbox")
    assert torch.equal(x[0], x[2])
    assert np.abs(x[1].numpy() - resize_for_model(b, 32, "letterbox")).max() * 255 <= 1.01


def test_device_image_is_an_image_with_lazy_numpy_pixels():
    px = _scene(40, 30)
    img = DeviceImage(torch.from_numpy(px).permute(2, 0, 1).contiguous(), "x")
    assert isinstance(img, Image)
    assert (img.width, img.height) == (40, 30)
    assert np.array_equal(img.pixels, px)
    with pytest.raises(ValueError, match="uint8"):
        DeviceImage(torch.zeros(3, 4, 4))
