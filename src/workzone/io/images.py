"""Decode any accepted image input safely, and prepare pixels for models.

Accepted inputs: a filesystem path (str or Path), raw bytes, a base64 string (optionally a
``data:image/...;base64,`` URL), a PIL image, or a numpy array (H, W), (H, W, 3) or (H, W, 4).
Formats: whatever Pillow decodes among JPEG, PNG, WebP, BMP, GIF (first frame), TIFF.

Every failure raises :class:`~workzone.errors.InvalidImageError` with a message naming the problem.
Memory and decode time are bounded from the header (:mod:`workzone.io.budget`) before any pixel is
decoded: pixel count, mode and bit depth, progressive JPEG scans, TIFF IFD / EXIF entries, and no
decoder Pillow runs in Python (RLE BMP); large JPEGs decode at a reduced DCT size. The server also
decodes in worker processes it can stop (:mod:`workzone.io.decode_pool`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import importlib.util
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from workzone.errors import InvalidImageError
from workzone.io.budget import (HIGH_BIT_MODES, count_jpeg_scans, decode_bytes_estimate, decode_seconds_estimate,
                                metadata_cost, output_bytes)
from workzone.types import Image

__all__ = [
    "decode_base64",
    "ImageLimits",
    "decode_image",
    "ImageHeader",
    "probe_image",
    "resize_for_model",
    "tile_boxes",
    "ResizeMode",
]

ResizeMode = Literal["squash", "letterbox", "center_crop"]

_ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}
_DATA_URL = re.compile(r"^data:[a-zA-Z0-9.+/-]*(;[a-zA-Z0-9=.+-]+)*;base64,", re.ASCII)
_B64_CHARS = re.compile(rb"^[A-Za-z0-9+/=\s_-]+$")
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {2: PILImage.Transpose.FLIP_LEFT_RIGHT, 3: PILImage.Transpose.ROTATE_180,
                4: PILImage.Transpose.FLIP_TOP_BOTTOM, 5: PILImage.Transpose.TRANSPOSE,
                6: PILImage.Transpose.ROTATE_270, 7: PILImage.Transpose.TRANSVERSE,
                8: PILImage.Transpose.ROTATE_90}
_ROWS_PER_CHUNK = 512  # 16-bit and float samples are scaled to 8 bits this many rows at a time


@dataclass(frozen=True)
class ImageLimits:
    """Limits enforced on every decoded image, checked on the header before pixels are decoded.

    Attributes:
        max_bytes: largest encoded input accepted.
        max_pixels: largest width*height accepted (guards against decompression bombs).
        min_side: smallest width or height accepted.
        max_side: decoded images with a longer side are downscaled to this (keeps memory bounded;
            0 disables). Large JPEGs are decoded at a reduced DCT size directly.
        max_decode_pixels: most pixels decoded at full resolution (bounds decode time; a large JPEG
            counts at the reduced DCT size it is decoded at).
        max_decode_bytes: most memory one decode may need, estimated from mode, bit depth and size
            (see :func:`workzone.io.budget.decode_bytes_estimate`).
        max_jpeg_scans: most scans a (progressive) JPEG may have.
        max_jpeg_scan_pixels: most scans x pixels a JPEG may cost (decode time grows with both).
        max_metadata_entries: most TIFF IFD / EXIF entries, summed over every IFD (see
            :func:`workzone.io.budget.metadata_cost`).
        max_metadata_bytes: most memory those entries' values may take once parsed.
    """

    max_bytes: int = 40 * 1024 * 1024
    max_pixels: int = 80_000_000
    min_side: int = 16
    max_side: int = 4096
    max_decode_pixels: int = 24_000_000
    max_decode_bytes: int = 512 * 1024 * 1024
    max_jpeg_scans: int = 100
    max_jpeg_scan_pixels: int = 400_000_000
    max_metadata_entries: int = 4096
    max_metadata_bytes: int = 16 * 1024 * 1024


DEFAULT_LIMITS = ImageLimits()


def decode_image(data: Any, *, limits: ImageLimits = DEFAULT_LIMITS, source: str | None = None) -> Image:
    """Decode ``data`` into an RGB :class:`~workzone.types.Image`.

    Args:
        data: path, bytes, base64 str, PIL image, numpy array or an already decoded Image.
        limits: size, memory and work limits to enforce.
        source: label for reports; inferred from a path when omitted.

    Returns:
        The decoded image, EXIF orientation applied, converted to 8-bit RGB.

    Raises:
        InvalidImageError: the input is of an unsupported type, cannot be decoded, or breaks a limit.
            Nothing else: whatever Pillow or numpy raise on a malformed input is translated here.

    Examples:
        >>> import numpy as np
        >>> decode_image(np.zeros((32, 48, 3), np.uint8)).pixels.shape
        (32, 48, 3)
    """
    label = source
    try:
        if isinstance(data, Image):
            return data
        if isinstance(data, np.ndarray):
            label = source or "<array>"
            return _from_array(data, limits, label)
        if isinstance(data, PILImage.Image):
            label = source or "<PIL>"
            return _from_pil(data, limits, label)
        if isinstance(data, (bytes, bytearray, memoryview)):
            label = source or "<bytes>"
            return _from_bytes(bytes(data), limits, label)
        if isinstance(data, Path):
            return _from_path(data, limits, source)
        if isinstance(data, str):
            if _DATA_URL.match(data) or _looks_like_base64(data):
                label = source or "<base64>"
                try:
                    raw = decode_base64(data)
                except InvalidImageError as exc:
                    raise InvalidImageError(f"the string is neither an existing file path nor valid base64 ({exc})") from exc
                return _from_bytes(raw, limits, label)
            return _from_path(Path(data), limits, source, from_string=True)
    except InvalidImageError:
        raise
    except MemoryError as exc:
        raise InvalidImageError(f"{_short(label)}: not enough memory to decode this image; lower its size") from exc
    except Exception as exc:  # noqa: BLE001 - the contract: a bad input is an InvalidImageError, whatever broke
        raise InvalidImageError(f"{_short(label)}: cannot decode the image ({type(exc).__name__})") from exc
    raise InvalidImageError(
        f"unsupported image input of type {type(data).__name__}; pass a path, bytes, a base64 string, "
        "a PIL image or a numpy array"
    )


def _short(label: str | None, limit: int = 120) -> str:
    text = label or "<input>"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _looks_like_base64(text: str) -> bool:
    # A string that names an existing file is a path; otherwise long runs of base64 characters are
    # an encoded image. Path-like strings ("x.jpg") contain characters base64 never uses.
    if len(text) < 16 or len(text) < 4096 and os.path.exists(text):
        return False
    return _B64_CHARS.match(text.encode("ascii", "replace")[:65536]) is not None


def decode_base64(text: str) -> bytes:
    """Decode standard or URL-safe base64 (a ``data:`` URL prefix and whitespace are allowed).

    Raises:
        InvalidImageError: empty, or not base64.

    Examples:
        >>> decode_base64("data:image/png;base64,aGk=")
        b'hi'
    """
    m = _DATA_URL.match(text)
    payload = "".join((text[m.end():] if m else text).split())
    if not payload:
        raise InvalidImageError("the image is empty (no base64 data)")
    padded = payload + "=" * (-len(payload) % 4)
    try:
        if "-" in payload or "_" in payload:
            return base64.b64decode(padded, altchars=b"-_", validate=True)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError("the image is not valid base64") from exc


def _from_path(path: Path, limits: ImageLimits, source: str | None, *, from_string: bool = False) -> Image:
    label = source or str(path)
    if not os.path.exists(path):  # os.path.exists, unlike Path.exists, returns False on over-long names
        # base64 is only worth naming when the caller handed a string, which could have been one.
        maybe = " (and not a base64-encoded image)" if from_string else ""
        raise InvalidImageError(f"{_short(str(path), 200)}: no such file{maybe}")
    if not os.path.isfile(path):
        raise InvalidImageError(f"{_short(str(path), 200)}: not a regular file")
    try:
        with open(path, "rb") as f:  # read at most one byte past the limit: /proc files report size 0
            raw = f.read(limits.max_bytes + 1)
    except OSError as exc:
        raise InvalidImageError(f"{_short(str(path), 200)}: cannot be read ({exc.strerror or type(exc).__name__})") \
            from exc
    if len(raw) > limits.max_bytes:
        raise InvalidImageError(f"{_short(str(path), 200)}: file is over the limit of {limits.max_bytes} bytes")
    return _from_bytes(raw, limits, label)


def _from_bytes(raw: bytes, limits: ImageLimits, source: str) -> Image:
    if not raw:
        raise InvalidImageError(f"{source}: empty input (0 bytes)")
    with _pillow_guard(limits, source):
        im, original, _ = _open_checked(raw, limits, source)
        px = _opencv_webp(raw) if _by_opencv(im) else None
        if px is not None:
            method = _orientation(im)
            im.close()  # Pillow's WebP decoder reserved two canvases when the file was opened
            if method is None and (not limits.max_side or max(px.shape[:2]) <= limits.max_side):
                return Image(px, source=source, original_size=original)  # already the answer: no copy
            im = PILImage.fromarray(px)
            del px
        else:
            if im.tell() != 0:  # never count frames: n_frames walks every frame of a GIF
                im.seek(0)
            im.load()
            method = _orientation(im)
        held = [im]
        del im
    return _finish(held, limits, source, original, method)


def _by_opencv(im: PILImage.Image) -> bool:
    """Whether OpenCV decodes this image instead of Pillow: an opaque still WebP of 2 MP or more, which
    Pillow decodes through its animation decoder (two full canvases and a copy of one: 16 bytes a
    pixel, against OpenCV's 3-byte array). The pixels are the same (libwebp decodes both; see
    tests/reliability/test_memory.py). Smaller ones stay with Pillow: OpenCV, once imported, keeps
    25 MB in the process."""
    return (im.format == "WEBP" and im.mode == "RGB" and im.size[0] * im.size[1] >= _OPENCV_MIN_PIXELS
            and not getattr(im, "is_animated", False) and _has_opencv())


_OPENCV_MIN_PIXELS = 2_000_000


@functools.lru_cache(maxsize=1)
def _has_opencv() -> bool:
    return importlib.util.find_spec("cv2") is not None


def _opencv_webp(raw: bytes) -> np.ndarray | None:
    """The RGB pixels of an opaque WebP decoded by OpenCV (orientation not applied), or None when
    OpenCV cannot decode it (Pillow then tries, and says what is wrong)."""
    import cv2

    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)
    px = cv2.imdecode(np.frombuffer(raw, np.uint8),
                      (cv2.IMREAD_COLOR if rgb is None else rgb) | cv2.IMREAD_IGNORE_ORIENTATION)
    if px is None or px.ndim != 3 or px.shape[2] != 3:
        return None
    if rgb is None:  # OpenCV < 4.11 decodes to BGR only
        cv2.cvtColor(px, cv2.COLOR_BGR2RGB, dst=px)
    return px


@dataclass(frozen=True)
class ImageHeader:
    """What the header of an encoded image says, read without decoding a pixel.

    Attributes:
        format: Pillow's format name (JPEG, PNG, ...).
        size: width and height as stored.
        out_bytes: bytes of the RGB array the decoded image becomes (after downscaling to
            ``max_side``): what the caller will hold, reserved before decoding.
        cost_s: CPU seconds the decode is expected to take
            (:func:`workzone.io.budget.decode_seconds_estimate`).
        work_bytes: peak memory of the decode itself, ``out_bytes`` included
            (:func:`workzone.io.budget.decode_bytes_estimate`): reserved while it runs.
    """

    format: str
    size: tuple[int, int]
    out_bytes: int
    cost_s: float = 0.0
    work_bytes: int = 0


def probe_image(raw: bytes, *, limits: ImageLimits = DEFAULT_LIMITS, source: str = "<bytes>") -> ImageHeader:
    """Read and check the header of encoded image bytes (every limit of :func:`decode_image` that can be
    checked from the header is), without decoding a pixel.

    Raises:
        InvalidImageError: not an image, or the header breaks a limit.

    Examples:
        >>> import io; from PIL import Image as P
        >>> buf = io.BytesIO(); P.new("RGB", (8192, 16)).save(buf, "PNG")
        >>> probe_image(buf.getvalue()).out_bytes  # downscaled to the default 4096 long side
        98304
    """
    if not raw:
        raise InvalidImageError(f"{source}: empty input (0 bytes)")
    try:
        with _pillow_guard(limits, source):
            im, original, need = _open_checked(raw, limits, source)
            fmt = str(im.format)
            scans = count_jpeg_scans(raw) if fmt in ("JPEG", "MPO") else 1
            return ImageHeader(fmt, original, output_bytes(im.size, limits.max_side),
                               decode_seconds_estimate(fmt, im.size, scans), need)
    except InvalidImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract: a bad input is an InvalidImageError, whatever broke
        raise InvalidImageError(f"{_short(source)}: cannot read the image header ({type(exc).__name__})") from exc


# Pillow's decoders written in Python (registered in PIL.Image.DECODERS; the C ones are not) hold the
# GIL and run as long as the data says: a 1 KB RLE BMP costs seconds. Refused from the header: no
# camera writes them.
_DECODER_NAMES = {"bmp_rle": "an RLE-compressed BMP"}


@contextlib.contextmanager
def _pillow_guard(limits: ImageLimits, source: str) -> Iterator[None]:
    """Pillow's bomb check at ``limits.max_pixels`` (as an error, on the header), and Pillow's errors
    translated into :class:`InvalidImageError`."""
    old = PILImage.MAX_IMAGE_PIXELS
    try:
        PILImage.MAX_IMAGE_PIXELS = limits.max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            try:
                yield
            except InvalidImageError:
                raise
            except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
                raise InvalidImageError(
                    f"{source}: image has more than {limits.max_pixels} pixels (decompression bomb guard)"
                ) from exc
            except (UnidentifiedImageError, ImportError) as exc:
                # ImportError: ultralytics, once imported, patches PIL.Image.open to retry unknown
                # files with an optional HEIF plugin and raises ModuleNotFoundError when it is absent.
                raise InvalidImageError(f"{source}: not an image Pillow can identify") from exc
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise InvalidImageError(f"{source}: truncated or corrupt image data") from exc
    finally:
        PILImage.MAX_IMAGE_PIXELS = old


def _open_checked(raw: bytes, limits: ImageLimits, source: str) -> tuple[PILImage.Image, tuple[int, int], int]:
    """Open ``raw`` (header only) and enforce every limit that the header decides; a large JPEG is
    set to decode at a reduced DCT size. Returns the image, not loaded, its stored size and the peak
    bytes its decode needs (:func:`workzone.io.budget.decode_bytes_estimate`)."""
    if len(raw) > limits.max_bytes:
        raise InvalidImageError(f"{source}: input is {len(raw)} bytes, over the limit of {limits.max_bytes}")
    # Before Pillow sees the bytes: Pillow parses TIFF IFDs (a TIFF's, a JPEG's MPF block) on open
    # and EXIF on demand, in Python, whatever their size.
    why = metadata_cost(raw, limits.max_metadata_entries, limits.max_metadata_bytes)
    if why is not None:
        raise InvalidImageError(f"{source}: {why}; strip the metadata (e.g. re-save the image) and resend it")
    im = PILImage.open(io.BytesIO(raw))
    fmt = im.format
    if fmt not in _ALLOWED_FORMATS:
        raise InvalidImageError(f"{source}: image format {fmt} is not accepted")
    for tile in im.tile:
        if tile[0] in PILImage.DECODERS:
            what = _DECODER_NAMES.get(tile[0], f"a {fmt} whose data needs Pillow's Python decoder {tile[0]!r}")
            raise InvalidImageError(f"{source}: {what} is not accepted (its decoder cannot be bounded); "
                                    "send it as PNG or JPEG")
    _check_dims(im.size, limits, source)
    original = im.size
    if fmt in ("JPEG", "MPO"):
        _check_jpeg_work(raw, im.size, limits, source)
        _draft(im, limits.max_side)
    if im.size[0] * im.size[1] > limits.max_decode_pixels:
        raise InvalidImageError(
            f"{source}: a {fmt} of {im.size[0]}x{im.size[1]} pixels is over the decode budget of "
            f"{limits.max_decode_pixels} pixels at full resolution; send it downscaled")
    need = _check_decode_memory(_memory_mode(im), im.size, limits, source, fmt)
    return im, original, need


def _memory_mode(im: PILImage.Image) -> str:
    """The mode the decode's memory is counted for: Pillow decodes an opaque WebP into RGBA-sized
    canvases too (when OpenCV does not decode it), and a palette with a transparent entry is flattened
    onto white like an image with alpha."""
    if im.format == "WEBP" and not _by_opencv(im):
        return "RGBA"
    if im.mode == "P" and "transparency" in im.info:
        return "PA"
    return im.mode


def _check_jpeg_work(raw: bytes, size: tuple[int, int], limits: ImageLimits, source: str) -> None:
    scans = count_jpeg_scans(raw)
    work = scans * size[0] * size[1]
    if scans > limits.max_jpeg_scans or work > limits.max_jpeg_scan_pixels:
        raise InvalidImageError(
            f"{source}: JPEG with {scans} scans of {size[0]}x{size[1]} pixels is over the decode budget "
            f"({limits.max_jpeg_scans} scans, {limits.max_jpeg_scan_pixels} scan-pixels); re-encode it as a "
            "baseline or standard progressive JPEG"
        )


def _draft(im: PILImage.Image, max_side: int) -> None:
    # Reduced-size DCT decoding (1/2, 1/4, 1/8): a large JPEG is decoded at no less than the size
    # it would be downscaled to anyway, at a fraction of the memory.
    w, h = im.size
    if max_side and max(w, h) > 2 * max_side:
        scale = max_side / max(w, h)
        im.draft(im.mode, (max(1, int(w * scale)), max(1, int(h * scale))))


def _check_decode_memory(mode: str, size: tuple[int, int], limits: ImageLimits, source: str, fmt: str = "") -> int:
    need = decode_bytes_estimate(mode, size, limits.max_side, fmt)
    if need > limits.max_decode_bytes:
        raise InvalidImageError(
            f"{source}: a {size[0]}x{size[1]} image of mode {mode} needs about {need // 2**20} MiB to decode, "
            f"over the budget of {limits.max_decode_bytes // 2**20} MiB; send a smaller or 8-bit image"
        )
    return need


def _check_dims(size: tuple[int, int], limits: ImageLimits, source: str) -> None:
    w, h = size
    if w * h > limits.max_pixels:
        raise InvalidImageError(
            f"{source}: image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}"
        )
    if min(w, h) < limits.min_side:
        raise InvalidImageError(f"{source}: image is {w}x{h}, smaller than the minimum side {limits.min_side}")


def _from_pil(im: PILImage.Image, limits: ImageLimits, source: str) -> Image:
    _check_dims(im.size, limits, source)
    _check_decode_memory(im.mode, im.size, limits, source)
    return _finish([im], limits, source, im.size, _orientation(im))


def _finish(held: list[PILImage.Image], limits: ImageLimits, source: str, size: tuple[int, int],
            method: PILImage.Transpose | None) -> Image:
    """Downscale, convert and turn upright the one image in ``held`` (taken out of it: when the
    caller kept no other reference, each step frees the image of the step before), then copy it
    into its array a band of rows at a time. Peak memory is what
    :func:`workzone.io.budget.decode_bytes_estimate` counts: never two full-size copies at once."""
    im = held.pop()
    original = (size[1], size[0]) if method in _SWAPS_SIDES else size
    im = _to_8bit(im)
    if im.mode == "La":  # premultiplied alpha: Pillow converts it to LA only
        im = im.convert("LA")
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGBA" if im.mode in ("PA", "RGBa") or "transparency" in im.info else "RGB")
    if limits.max_side and max(im.size) > limits.max_side:
        scale = limits.max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), PILImage.BILINEAR)
    im = _to_rgb(im)
    if method is not None:
        im = im.transpose(method)
    return Image(_array(im), source=source, original_size=original)


_ROWS_PER_COPY = 256


def _array(im: PILImage.Image) -> np.ndarray:
    """The RGB image as a (H, W, 3) uint8 array, copied a band of rows at a time (``np.asarray`` of
    the whole image goes through a full-size bytes copy first)."""
    out = np.empty((im.height, im.width, 3), np.uint8)
    for r in range(0, im.height, _ROWS_PER_COPY):
        out[r:r + _ROWS_PER_COPY] = np.asarray(im.crop((0, r, im.width, min(im.height, r + _ROWS_PER_COPY))))
    return out


_SWAPS_SIDES = {PILImage.Transpose.TRANSPOSE, PILImage.Transpose.ROTATE_270, PILImage.Transpose.TRANSVERSE,
                PILImage.Transpose.ROTATE_90}


def _orientation(im: PILImage.Image) -> PILImage.Transpose | None:
    try:
        return _ORIENTATION.get(int(im.getexif().get(0x0112, 1)))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a decodable image
        return None


def _to_8bit(im: PILImage.Image) -> PILImage.Image:
    """16-bit integer and float images to 8-bit L, scaled by their maximum, a chunk of rows at a time.

    float64 is never used: the samples are read once as an array and scaled in float32 chunks.
    """
    if im.mode not in HIGH_BIT_MODES:
        return im
    arr = np.asarray(im)
    hi = 0.0
    for r in range(0, arr.shape[0], _ROWS_PER_CHUNK):
        block = arr[r:r + _ROWS_PER_CHUNK]
        if block.dtype.kind == "f":
            block = block[np.isfinite(block)]
        if block.size:
            hi = max(hi, float(block.max()))
    scale = np.float32(255.0 / (hi if hi > 255 else 255.0))
    out = np.empty(arr.shape, np.uint8)
    for r in range(0, arr.shape[0], _ROWS_PER_CHUNK):
        block = arr[r:r + _ROWS_PER_CHUNK].astype(np.float32)
        np.nan_to_num(block, copy=False, nan=0.0, posinf=255.0 / float(scale), neginf=0.0)
        out[r:r + _ROWS_PER_CHUNK] = np.clip(block * scale, 0, 255)
    return PILImage.fromarray(out, "L")


def _to_rgb(im: PILImage.Image) -> PILImage.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def _from_array(arr: np.ndarray, limits: ImageLimits, source: str) -> Image:
    if arr.ndim not in (2, 3) or arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        raise InvalidImageError(f"{source}: expected an array of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.dtype.kind not in "buif":
        raise InvalidImageError(f"{source}: expected an array of numbers (uint8, other integers, float, bool), "
                                f"got dtype {arr.dtype}")
    _check_dims((arr.shape[1], arr.shape[0]), limits, source)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                raise InvalidImageError(f"{source}: float array holds NaN or infinite values")
            scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
            arr = np.clip(arr * np.float32(scale), 0, 255).astype(np.uint8)
        elif arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        elif arr.dtype.kind == "b":
            arr = arr.astype(np.uint8) * np.uint8(255)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        return _from_pil(PILImage.fromarray(np.ascontiguousarray(arr), "RGBA"), limits, source)
    return _from_pil(PILImage.fromarray(np.ascontiguousarray(arr), "RGB"), limits, source)


def resize_for_model(pixels: np.ndarray | PILImage.Image, size: int, mode: ResizeMode = "squash", pad_value: int = 0,
                     *, out: np.ndarray | None = None) -> np.ndarray:
    """Resize RGB pixels to a ``size`` x ``size`` model input.

    This is the one preprocessing function shared by training, export checks and inference, so
    the classifier sees the same pixels everywhere.

    Args:
        pixels: array of shape (H, W, 3), uint8, or a PIL image (spares a copy when the caller has one).
        size: side of the square output.
        mode: ``squash`` (stretch), ``letterbox`` (fit, pad with ``pad_value``) or ``center_crop``.
        out: a float32 (3, size, size) array to write into (a slot of a batch) instead of a new one.

    Returns:
        float32 array of shape (3, size, size) with values in [0, 1] (``out`` when given).

    Examples:
        >>> resize_for_model(np.zeros((10, 20, 3), np.uint8), 8, "letterbox").shape
        (3, 8, 8)
    """
    im = pixels if isinstance(pixels, PILImage.Image) else PILImage.fromarray(pixels)
    if im.mode != "RGB":
        im = im.convert("RGB")
    dst = np.empty((3, size, size), np.float32) if out is None else out
    if mode == "squash":
        im = im.resize((size, size), PILImage.BILINEAR)
    elif mode == "letterbox":
        scale = size / max(im.size)
        nw, nh = max(1, round(im.width * scale)), max(1, round(im.height * scale))
        # Only the resized part is converted; the padding is written as a constant (the same values as
        # pasting onto a padded canvas, without converting the canvas).
        left, top = (size - nw) // 2, (size - nh) // 2
        dst[...] = np.float32(pad_value) / _255
        _to_unit(im.resize((nw, nh), PILImage.BILINEAR), dst[:, top:top + nh, left:left + nw])
        return dst
    elif mode == "center_crop":
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), PILImage.BILINEAR)
    else:
        raise ValueError(f"mode: expected squash, letterbox or center_crop, got {mode!r}")
    _to_unit(im, dst)
    return dst


_255 = np.float32(255.0)


def _to_unit(im: PILImage.Image, out: np.ndarray) -> None:
    # float32(v) / 255 per sample, channels first, written straight into ``out`` (no float copy of the
    # interleaved image, no transposed copy): the same values as ``np.asarray(im, np.float32) / 255.0``.
    np.divide(np.asarray(im).transpose(2, 0, 1), _255, out=out, dtype=np.float32)


def tile_boxes(width: int, height: int, grid: int, overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """Split an image into ``grid`` x ``grid`` overlapping tiles.

    Args:
        width: image width in pixels.
        height: image height in pixels.
        grid: tiles per side (>= 1).
        overlap: fraction of a tile shared with its neighbour.

    Returns:
        (x1, y1, x2, y2) boxes, row-major.

    Examples:
        >>> tile_boxes(100, 100, 1)
        [(0, 0, 100, 100)]
        >>> len(tile_boxes(100, 80, 2))
        4
    """
    if grid < 1:
        raise ValueError(f"grid: expected >= 1, got {grid}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap: expected in [0, 1), got {overlap}")
    tw = width / (grid - (grid - 1) * overlap)
    th = height / (grid - (grid - 1) * overlap)
    boxes = []
    for r in range(grid):
        for c in range(grid):
            x1 = round(c * tw * (1 - overlap))
            y1 = round(r * th * (1 - overlap))
            boxes.append((x1, y1, min(width, round(x1 + tw)), min(height, round(y1 + th))))
    return boxes
