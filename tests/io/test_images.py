import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.conftest import encode, solid
from workzone.errors import InvalidImageError
from workzone.io.images import ImageLimits, decode_image, resize_for_model, tile_boxes

RED = solid((200, 10, 10))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_decodes_every_accepted_format(fmt):
    img = decode_image(encode(RED, fmt))
    assert img.pixels.shape == (40, 48, 3)
    assert img.pixels.dtype == np.uint8
    assert abs(int(img.pixels[..., 0].mean()) - 200) < 12


def test_accepts_path_bytes_base64_dataurl_pil_and_array(tmp_path):
    raw = encode(RED, "PNG")
    p = tmp_path / "x.png"
    p.write_bytes(raw)
    b64 = base64.b64encode(raw).decode()
    inputs = [p, str(p), raw, bytearray(raw), b64, "data:image/png;base64," + b64, PILImage.fromarray(RED), RED]
    for x in inputs:
        assert decode_image(x).pixels.shape == (40, 48, 3), type(x)
    assert decode_image(p).source == str(p)


def test_gif_first_frame():
    frames = [PILImage.fromarray(solid(c)) for c in [(250, 0, 0), (0, 0, 250)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    img = decode_image(buf.getvalue())
    assert img.pixels[..., 0].mean() > img.pixels[..., 2].mean()


def test_exif_orientation_is_applied():
    im = PILImage.fromarray(solid((10, 200, 10), size=(60, 20)))
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue()).pixels.shape[:2] == (60, 20)


@pytest.mark.parametrize("mode", ["L", "CMYK", "I;16", "RGBA", "LA", "P", "1"])
def test_converts_unusual_modes(mode):
    base = PILImage.fromarray(solid((120, 60, 30)))
    im = base.convert(mode) if mode != "I;16" else PILImage.fromarray(np.full((40, 48), 40000, np.uint16))
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    out = decode_image(buf.getvalue())
    assert out.pixels.shape == (40, 48, 3)


def test_alpha_is_composited_on_white():
    arr = np.zeros((20, 20, 4), np.uint8)  # fully transparent black
    assert decode_image(arr).pixels.min() == 255


def test_float_and_uint16_arrays():
    assert decode_image(np.ones((20, 20, 3), np.float32)).pixels.max() == 255
    assert decode_image(np.full((20, 20), 65535, np.uint16)).pixels.max() == 255
    with pytest.raises(InvalidImageError, match="NaN"):
        decode_image(np.full((20, 20, 3), np.nan, np.float32))


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, limits, match",
    [
        (b"", ImageLimits(), "empty"),
        (b"not an image at all", ImageLimits(), "identify"),
        (encode(RED, "JPEG")[:200], ImageLimits(), "truncated|corrupt"),
        (_png_header_only(20000, 10000), ImageLimits(), "pixels"),
        (encode(RED, "PNG"), ImageLimits(max_bytes=10), "over the limit"),
        (encode(solid((1, 2, 3), size=(8, 8)), "PNG"), ImageLimits(), "minimum side"),
        ("@@@ not base64 and not a file @@@" * 20, ImageLimits(), "base64"),
        ("/no/such/file.jpg", ImageLimits(), "no such file"),
        (12345, ImageLimits(), "unsupported image input"),
        (np.zeros((4, 4, 5), np.uint8), ImageLimits(), "shape"),
    ],
)
def test_rejections_name_the_problem(data, limits, match):
    with pytest.raises(InvalidImageError, match=match):
        decode_image(data, limits=limits)


def test_large_images_are_downscaled_to_max_side():
    img = decode_image(np.zeros((300, 900, 3), np.uint8), limits=ImageLimits(max_side=300))
    assert img.pixels.shape == (100, 300, 3)
    assert img.original_size == (900, 300)


@pytest.mark.parametrize("mode", ["squash", "letterbox", "center_crop"])
def test_resize_for_model(mode):
    x = resize_for_model(np.full((30, 60, 3), 255, np.uint8), 16, mode)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    if mode == "letterbox":
        assert x[:, 0, :].max() == 0.0 and x[:, 8, :].min() == 1.0  # bars on top, content in the middle


def test_tile_boxes_cover_the_image():
    boxes = tile_boxes(640, 480, 3, 0.25)
    assert len(boxes) == 9
    assert min(b[0] for b in boxes) == 0 and max(b[2] for b in boxes) == 640
    assert max(b[3] for b in boxes) == 480
    with pytest.raises(ValueError):
        tile_boxes(10, 10, 0)


def test_unidentified_image_stays_invalid_when_pil_open_is_patched(monkeypatch):
    """ultralytics patches PIL.Image.open to import an optional plugin on unknown files."""
    real_open = PILImage.open

    def patched(fp, *a, **kw):
        try:
            return real_open(fp, *a, **kw)
        except PILImage.UnidentifiedImageError:
            raise ModuleNotFoundError("No module named 'pi_heif'")

    monkeypatch.setattr(PILImage, "open", patched)
    with pytest.raises(InvalidImageError, match="identify"):
        decode_image(b"definitely not an image")


def _resize_before(pixels: np.ndarray, size: int, mode: str, pad_value: int = 0) -> np.ndarray:
    """resize_for_model as it was written before it learnt to skip the canvas and the float copies."""
    im = PILImage.fromarray(pixels)
    if mode == "squash":
        im = im.resize((size, size), PILImage.BILINEAR)
    elif mode == "letterbox":
        scale = size / max(im.size)
        nw, nh = max(1, round(im.width * scale)), max(1, round(im.height * scale))
        canvas = PILImage.new("RGB", (size, size), (pad_value,) * 3)
        canvas.paste(im.resize((nw, nh), PILImage.BILINEAR), ((size - nw) // 2, (size - nh) // 2))
        im = canvas
    else:
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), PILImage.BILINEAR)
    return (np.asarray(im, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()


@pytest.mark.parametrize("mode", ["squash", "letterbox", "center_crop"])
@pytest.mark.parametrize("pad_value", [0, 114])
def test_resize_for_model_gives_the_same_bits_as_the_canvas_and_division(mode, pad_value):
    rng = np.random.default_rng(3)
    for h, w in [(360, 480), (640, 360), (37, 91), (64, 64)]:
        px = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = _resize_before(px, 96, mode, pad_value)
        assert np.array_equal(resize_for_model(px, 96, mode, pad_value), want)
        assert np.array_equal(resize_for_model(PILImage.fromarray(px), 96, mode, pad_value), want)  # a PIL image too
        batch = np.full((2, 3, 96, 96), -1.0, np.float32)
        slot = batch[1]
        assert resize_for_model(px, 96, mode, pad_value, out=slot) is slot  # written in place, all of it
        assert np.array_equal(batch[1], want) and (batch[0] == -1.0).all()


def test_resize_for_model_takes_grey_images_as_rgb():
    grey = np.arange(30 * 60, dtype=np.uint8).reshape(30, 60)
    x = resize_for_model(grey, 16, "letterbox")
    assert x.shape == (3, 16, 16) and np.array_equal(x[0], x[2])
