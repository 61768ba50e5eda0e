"""The reliability suite's inputs, all drawn by this project: seed images and decode bombs.

Seeds are small images in every accepted format and in the unusual modes (16-bit, float, CMYK,
palette with transparency, LA, animated GIF, EXIF-rotated JPEG); the fuzzers mutate them. They
are committed in ``tests/reliability/seeds/`` (regenerate with ``python -m tests.reliability.corpus``)
so a fuzzing run starts from the same bytes everywhere. Bombs are built in memory: they are small
files that would be huge, or slow, to decode.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

__all__ = ["SEED_DIR", "make_seeds", "load_seeds", "bombs", "progressive_scan_bomb", "zero_png", "attack_inputs",
           "rle_bmp", "tiff_with_entries", "jpeg_with_exif_entries"]

SEED_DIR = Path(__file__).with_name("seeds")


def _scene(w: int, h: int, seed: int) -> np.ndarray:
    """A street-like drawing: sky and road gradients, an orange cone, a white stripe."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h)[:, None, None]
    img = (np.array([110, 150, 210]) * (1 - y) + np.array([70, 70, 75]) * y).repeat(w, axis=1)
    cx, base = int(w * rng.uniform(0.3, 0.7)), int(h * 0.85)
    for r in range(int(h * 0.4)):
        half = max(1, r // 3)
        img[base - r, max(0, cx - half):cx + half] = (240, 110, 20)
    img[int(h * 0.9):int(h * 0.93), :] = 235
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(im: PILImage.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_seeds() -> dict[str, bytes]:
    """Name -> encoded bytes of every seed (deterministic)."""
    rgb = PILImage.fromarray(_scene(64, 48, 0))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(PILImage.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))))
    exif = PILImage.Exif()
    exif[0x0112] = 6
    pal = rgb.convert("P", palette=PILImage.Palette.ADAPTIVE, colors=16)
    gif_frames = [PILImage.fromarray(_scene(40, 32, k)).convert("P") for k in range(3)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, format="GIF", save_all=True, append_images=gif_frames[1:], duration=50, loop=0)
    i16 = PILImage.fromarray((_scene(48, 40, 1)[..., 0].astype(np.uint16) * 257))
    f32 = PILImage.fromarray(_scene(48, 40, 2)[..., 1].astype(np.float32) / 255.0, "F")
    return {
        "baseline.jpg": _save(rgb, "JPEG", quality=80),
        "progressive.jpg": _save(rgb, "JPEG", quality=80, progressive=True),
        "rotated_exif.jpg": _save(rgb, "JPEG", quality=75, exif=exif.tobytes()),
        "grey.jpg": _save(rgb.convert("L"), "JPEG", quality=70),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG", quality=70),
        "rgb.png": _save(rgb, "PNG"),
        "rgba.png": _save(rgba, "PNG"),
        "la.png": _save(rgba.convert("LA"), "PNG"),
        "palette_transparent.png": _save(pal, "PNG", transparency=0),
        "grey16.png": _save(i16, "PNG"),
        "bilevel.png": _save(rgb.convert("1"), "PNG"),
        "rgb.webp": _save(rgb, "WEBP", quality=70),
        "rgba_lossless.webp": _save(rgba, "WEBP", lossless=True),
        "rgb.bmp": _save(rgb.resize((32, 24)), "BMP"),
        "animated.gif": gif.getvalue(),
        "rgb_deflate.tif": _save(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "float.tif": _save(f32, "TIFF"),
        "grey16.tif": _save(i16, "TIFF", compression="tiff_lzw"),
        "cmyk.tif": _save(rgb.convert("CMYK"), "TIFF"),
    }


def load_seeds() -> dict[str, bytes]:
    """The committed seeds (falls back to generating them when the folder is missing)."""
    if SEED_DIR.is_dir():
        return {p.name: p.read_bytes() for p in sorted(SEED_DIR.iterdir()) if p.is_file()}
    return make_seeds()


_NEXT_MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")


def progressive_scan_bomb(width: int = 4000, height: int = 3000, scans: int = 1000) -> bytes:
    """A progressive JPEG whose last scan is repeated ``scans`` times (about 100 KB at 4000x3000).

    libjpeg warns about the repeated scan parameters and decodes every one of them: each scan walks
    every block of the image, so decode time grows with scans x pixels, not with the file size.
    """
    raw = _save(PILImage.new("RGB", (width, height), (120, 130, 140)), "JPEG", quality=50, progressive=True)
    last = raw.rfind(b"\xff\xda")
    m = _NEXT_MARKER.search(raw, last + 2 + int.from_bytes(raw[last + 2:last + 4], "big"))
    assert m is not None
    return raw[:m.start()] + raw[last:m.start()] * scans + raw[m.start():]


def bombs() -> dict[str, bytes]:
    """Name -> a small input that is expensive to decode (the cases of issue 12)."""
    side = 8944  # 8944 x 8944 = 79,995,136 pixels, just under the default 80 MP limit
    f32 = PILImage.fromarray(np.zeros((side, side), np.float32), "F")
    tiff_f = _save(f32, "TIFF", compression="tiff_adobe_deflate")
    del f32
    frames = [PILImage.new("P", (32, 32), k % 200) for k in range(2000)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=1)
    return {
        "png16_8944": zero_png(side, side, bit_depth=16, colour_type=0),
        "float_tiff_8944": tiff_f,
        "rgb_png_8944": zero_png(side, side, bit_depth=8, colour_type=2),
        "progressive_1000_scans": progressive_scan_bomb(),
        "progressive_100_scans": progressive_scan_bomb(scans=100),
        "gif_2000_frames": gif.getvalue(),
        "png_header_30000": _png_header(30000, 30000),
    }


def zero_png(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A valid all-zero PNG, compressed row by row (never holds the pixels; 8944^2 16-bit is ~150 KB)."""
    import struct
    import zlib

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\x00" * (1 + width * channels * bit_depth // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF) + b"\x00" * 16)


def attack_inputs() -> dict[str, bytes]:
    """Name -> the small hostile inputs of issue 20 (CPU, memory and metadata bombs inside the size limits)."""
    return {
        "rle_bmp_4000": rle_bmp(4000, 4000),
        "webp_4896": _save(PILImage.new("RGB", (4896, 4896), (90, 100, 110)), "WEBP", lossless=True),
        "tiff_20000_entries": tiff_with_entries(20000),
        "tiff_shared_values": tiff_with_entries(64, values_each=1_000_000),
        "jpeg_exif_5000_entries": jpeg_with_exif_entries(5000),
    }


def rle_bmp(width: int, height: int) -> bytes:
    """An RLE8 BMP of ``width`` x ``height`` whose every row is one short run then end-of-line (a few
    bytes per row): Pillow decodes RLE in Python, row by row, under the GIL."""
    import struct

    palette = b"".join(struct.pack("<BBBB", k, k, k, 0) for k in range(256))
    data = b"".join(b"\x02\x40\x00\x00" for _ in range(height)) + b"\x00\x01"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    head = b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
    return head + info + palette + data


def _tiff_ifd(tags: list[tuple[int, int, int, int]], base: int) -> bytes:
    """One little-endian IFD at file offset ``base``: (tag, type, count, value-or-offset) entries."""
    import struct

    out = [struct.pack("<H", len(tags))]
    for tag, kind, count, value in sorted(tags):
        inline = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        out.append(struct.pack("<HHI", tag, kind, count) + inline)
    out.append(b"\x00\x00\x00\x00")
    return b"".join(out)


def tiff_with_entries(extra: int, values_each: int = 1) -> bytes:
    """An 8x8 grey TIFF whose IFD holds ``extra`` more (private) LONG entries of ``values_each``
    values each, all pointing at one shared block: small on disk, costly for a parser that turns
    every entry's values into objects."""
    w = h = 8
    n = 9 + extra
    shared = 8 + 2 + 12 * n + 4
    pixels_at = shared + (4 * values_each if values_each > 1 else 0)
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, pixels_at), (277, 3, 1, 1), (278, 3, 1, h), (279, 4, 1, w * h)]
    tags += [(40000 + k, 4, values_each, shared if values_each > 1 else k) for k in range(extra)]
    block = b"\x00" * (pixels_at - shared)
    return b"II*\x00\x08\x00\x00\x00" + _tiff_ifd(tags, 8) + block + b"\x80" * (w * h)


def jpeg_with_exif_entries(entries: int) -> bytes:
    """A 64x48 JPEG whose EXIF IFD0 holds ``entries`` entries (about 12 bytes each, inside one APP1)."""
    ifd = _tiff_ifd([(0x0112, 3, 1, 1)] + [(40000 + k, 4, 1, k) for k in range(entries - 1)], 8)
    exif = b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00" + ifd
    return _save(PILImage.fromarray(_scene(64, 48, 3)), "JPEG", quality=80, exif=exif)


if __name__ == "__main__":
    SEED_DIR.mkdir(exist_ok=True)
    for name, data in make_seeds().items():
        (SEED_DIR / name).write_bytes(data)
    print(f"wrote {len(make_seeds())} seeds to {SEED_DIR}")
