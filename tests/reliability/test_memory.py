"""Memory reserved before decoding (issue 20, attack 3): the decode's peak memory said from the header,
checked against real decodes; OpenCV's WebP pixels against Pillow's; the decoder processes' hard cap."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from workzone.io.images import decode_image, probe_image

# Decodes `path` in this fresh process after a warm-up (codecs loaded, OpenCV imported: loaded once per
# process, it is not the decode's), with the kernel's peak-RSS mark reset just before: the peak is the decode's own.
_PEAK = """
import io, json, sys
import numpy as np
try:
    import cv2
except ImportError:
    pass
from PIL import Image
from workzone.io.images import decode_image
def status(key):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(key + ":"))
for fmt in ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"):
    buf = io.BytesIO(); Image.new("RGB", (64, 48), (1, 2, 3)).save(buf, fmt); decode_image(buf.getvalue())
data = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
before = status("VmRSS")
img = decode_image(data)
print(json.dumps({"peak": status("VmHWM") - before, "shape": list(img.pixels.shape)}))
"""


def _encode(im: PILImage.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> PILImage.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), np.uint8)  # blocky noise: compresses, still varied
    return PILImage.fromarray(small).resize((w, h), PILImage.NEAREST).convert(mode)


def _with_alpha(im: PILImage.Image) -> PILImage.Image:
    im = im.convert("RGBA")
    im.putalpha(PILImage.linear_gradient("L").resize(im.size))  # real transparency: kept by the encoder
    return im


def _cases() -> dict[str, bytes]:
    rotated = _noise(4800, 3000)
    exif = rotated.getexif()
    exif[0x0112] = 6
    return {
        "webp_rgb_4896_downscaled": _encode(_noise(4896, 4896), "WEBP", quality=80),
        "webp_rgba_3000": _encode(_with_alpha(_noise(3000, 2000)), "WEBP", quality=80),
        "webp_rgb_3000": _encode(_noise(3000, 2000), "WEBP", quality=80),
        "png_rgb_5000x3000_downscaled": _encode(_noise(5000, 3000), "PNG", compress_level=1),
        "png_palette_4000x3000": _encode(_noise(4000, 3000).convert("P"), "PNG", compress_level=1),
        "png_grey16_4500x3000": _encode(_noise(4500, 3000, "L").convert("I;16"), "PNG", compress_level=1),
        "jpeg_rotated_4800x3000": _encode(rotated, "JPEG", quality=85, exif=exif),
        "jpeg_4000x3000": _encode(_noise(4000, 3000), "JPEG", quality=85),
        "tiff_rgba_3000": _encode(_with_alpha(_noise(3000, 3000)), "TIFF"),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("memory")
    out = {}
    for name, data in _cases().items():
        (root / name).write_bytes(data)
        out[name] = root / name
    return out


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak")
@pytest.mark.parametrize("name", [
    "webp_rgb_4896_downscaled", "webp_rgba_3000", "webp_rgb_3000", "png_rgb_5000x3000_downscaled", "png_palette_4000x3000",
    "png_grey16_4500x3000", "jpeg_rotated_4800x3000", "jpeg_4000x3000", "tiff_rgba_3000"])
def test_the_header_says_at_least_what_the_decode_takes_and_not_far_more(cases, name):
    data = cases[name].read_bytes()
    est = probe_image(data).work_bytes
    out = subprocess.run([sys.executable, "-c", _PEAK, str(cases[name])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["peak"] <= est, (name, got["peak"] / 2**20, est / 2**20)
    assert est <= 1.6 * got["peak"] + 16 * 2**20, (name, got["peak"] / 2**20, est / 2**20)  # honest, not padded


@pytest.mark.parametrize("kw", [{"quality": 80}, {"lossless": True}])
def test_opencv_decodes_an_opaque_webp_to_pillows_pixels(kw):
    from workzone.io import images

    if not images._has_opencv():
        pytest.skip("OpenCV is not installed: Pillow decodes every WebP")
    im = _noise(1920, 1200, seed=3)
    exif = im.getexif()
    exif[0x0112] = 8
    data = _encode(im, "WEBP", exif=exif, **kw)
    ours = decode_image(data)
    pil = PILImage.open(io.BytesIO(data))
    assert images._by_opencv(pil)
    want = np.asarray(pil.convert("RGB").transpose(PILImage.Transpose.ROTATE_90))
    assert ours.pixels.shape == want.shape == (1920, 1200, 3) and ours.original_size == (1200, 1920)
    assert np.array_equal(ours.pixels, want)
    assert not images._by_opencv(PILImage.open(io.BytesIO(_encode(_noise(640, 480), "WEBP"))))  # small: Pillow


def test_a_decoder_process_past_its_memory_cap_refuses_the_image_and_goes_on():
    import asyncio

    from workzone.errors import DecodeBudgetExceeded
    from workzone.io.decode_pool import DecodeBudget, DecodePool
    from workzone.io.images import ImageLimits

    big = _encode(_noise(3000, 3000), "PNG", compress_level=1)  # about 80 MiB to decode
    small = _encode(_noise(320, 240), "PNG")

    async def go() -> None:
        # A cap below what the header says the decode needs: as if the estimate had been wrong.
        pool = DecodePool(1, ImageLimits(), heavy_workers=0, memory_cap=24 * 2**20, image_cpu_s=10)
        try:
            with pytest.raises(DecodeBudgetExceeded, match="may use 24 MiB"):
                await pool.decode(big, "big.png", DecodeBudget(30.0))
            assert pool.killed == 0  # refused by the worker itself, which goes on
            img = await pool.decode(small, "small.png", DecodeBudget(30.0))
            assert img.pixels.shape == (240, 320, 3)
        finally:
            await pool.aclose()

    asyncio.run(go())
