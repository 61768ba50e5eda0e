"""Decode any accepted image input safely, and prepare pixels for models.

Accepted inputs: a filesystem path (str or Path), raw bytes, a base64 string (optionally a
``data:image/...;base64,`` URL), a PIL image, or a numpy array (H, W), (H, W, 3) or (H, W, 4).
Formats: whatever Pillow decodes among JPEG, PNG, WebP, BMP, GIF (first frame), TIFF.

Every failure raises :class:`~workzone.errors.InvalidImageError` with a message naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from workzone.errors import InvalidImageError
from workzone.types import Image

__all__ = [
    "decode_base64",
    "ImageLimits",
    "decode_image",
    "resize_for_model",
    "tile_boxes",
    "ResizeMode",
]

ResizeMode = Literal["squash", "letterbox", "center_crop"]

_ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}
_DATA_URL = re.compile(r"^data:[a-zA-Z0-9.+/-]*(;[a-zA-Z0-9=.+-]+)*;base64,", re.ASCII)
_B64_CHARS = re.compile(rb"^[A-Za-z0-9+/=\s_-]+$")


@dataclass(frozen=True)
class ImageLimits:
    """Limits enforced on every decoded image.

    Attributes:
        max_bytes: largest encoded input accepted.
        max_pixels: largest width*height accepted (guards against decompression bombs).
        min_side: smallest width or height accepted.
        max_side: decoded images with a longer side are downscaled to this (keeps memory bounded;
            0 disables).
    """

    max_bytes: int = 40 * 1024 * 1024
    max_pixels: int = 80_000_000
    min_side: int = 16
    max_side: int = 4096


DEFAULT_LIMITS = ImageLimits()


def decode_image(data: Any, *, limits: ImageLimits = DEFAULT_LIMITS, source: str | None = None) -> Image:
    """Decode ``data`` into an RGB :class:`~workzone.types.Image`.

    Args:
        data: path, bytes, base64 str, PIL image, numpy array or an already decoded Image.
        limits: size limits to enforce.
        source: label for reports; inferred from a path when omitted.

    Returns:
        The decoded image, EXIF orientation applied, converted to 8-bit RGB.

    Raises:
        InvalidImageError: the input is of an unsupported type, cannot be decoded, or breaks a limit.

    Examples:
        >>> import numpy as np
        >>> decode_image(np.zeros((32, 48, 3), np.uint8)).pixels.shape
        (32, 48, 3)
    """
    if isinstance(data, Image):
        return data
    if isinstance(data, np.ndarray):
        return _from_array(data, limits, source or "<array>")
    if isinstance(data, PILImage.Image):
        return _from_pil(data, limits, source or "<PIL>")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(data), limits, source or "<bytes>")
    if isinstance(data, Path):
        return _from_path(data, limits, source)
    if isinstance(data, str):
        if _DATA_URL.match(data) or _looks_like_base64(data):
            try:
                raw = decode_base64(data)
            except InvalidImageError as exc:
                raise InvalidImageError(f"the string is neither an existing file path nor valid base64 ({exc})") from exc
            return _from_bytes(raw, limits, source or "<base64>")
        return _from_path(Path(data), limits, source)
    raise InvalidImageError(
        f"unsupported image input of type {type(data).__name__}; pass a path, bytes, a base64 string, "
        "a PIL image or a numpy array"
    )


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
        raise InvalidImageError(f"the image is not valid base64 ({exc})") from exc


def _from_path(path: Path, limits: ImageLimits, source: str | None) -> Image:
    label = source or str(path)
    if not os.path.exists(path):  # os.path.exists, unlike Path.exists, returns False on over-long names
        raise InvalidImageError(f"{str(path)[:200]}: no such file (and not a base64-encoded image)")
    if not os.path.isfile(path):
        raise InvalidImageError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise InvalidImageError(f"{path}: file is {size} bytes, over the limit of {limits.max_bytes}")
    return _from_bytes(path.read_bytes(), limits, label)


def _from_bytes(raw: bytes, limits: ImageLimits, source: str) -> Image:
    if not raw:
        raise InvalidImageError(f"{source}: empty input (0 bytes)")
    if len(raw) > limits.max_bytes:
        raise InvalidImageError(f"{source}: input is {len(raw)} bytes, over the limit of {limits.max_bytes}")
    # Pillow's own bomb check warns at max_pixels and fails at twice that; we set it to our limit and
    # turn the warning into an error so that the check happens on the header, before pixels are decoded.
    old = PILImage.MAX_IMAGE_PIXELS
    try:
        PILImage.MAX_IMAGE_PIXELS = limits.max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            try:
                im = PILImage.open(io.BytesIO(raw))
                fmt = im.format
                if fmt not in _ALLOWED_FORMATS:
                    raise InvalidImageError(f"{source}: image format {fmt} is not accepted")
                _check_dims(im.size, limits, source)
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                im.load()
            except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
                raise InvalidImageError(
                    f"{source}: image has more than {limits.max_pixels} pixels (decompression bomb guard)"
                ) from exc
            except (UnidentifiedImageError, ImportError) as exc:
                # ImportError: ultralytics, once imported, patches PIL.Image.open to retry unknown
                # files with an optional HEIF plugin and raises ModuleNotFoundError when it is absent.
                raise InvalidImageError(f"{source}: not an image Pillow can identify") from exc
            except (OSError, SyntaxError, ValueError) as exc:
                raise InvalidImageError(f"{source}: truncated or corrupt image data ({exc})") from exc
    finally:
        PILImage.MAX_IMAGE_PIXELS = old
    return _from_pil(im, limits, source)


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
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a decodable image
        pass
    original = im.size
    im = _to_rgb(im)
    if limits.max_side and max(im.size) > limits.max_side:
        scale = limits.max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), PILImage.BILINEAR)
    return Image(np.asarray(im, dtype=np.uint8).copy(), source=source, original_size=original)


def _to_rgb(im: PILImage.Image) -> PILImage.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = np.clip(arr / (hi if hi > 255 else 255.0) * 255.0, 0, 255).astype(np.uint8)
        return PILImage.fromarray(arr, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def _from_array(arr: np.ndarray, limits: ImageLimits, source: str) -> Image:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InvalidImageError(f"{source}: expected an array of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)):
                raise InvalidImageError(f"{source}: float array holds NaN or infinite values")
            scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
            arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
        elif arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[2] == 4:
        return _from_pil(PILImage.fromarray(np.ascontiguousarray(arr), "RGBA"), limits, source)
    return _from_pil(PILImage.fromarray(np.ascontiguousarray(arr), "RGB"), limits, source)


def resize_for_model(pixels: np.ndarray, size: int, mode: ResizeMode = "squash", pad_value: int = 0) -> np.ndarray:
    """Resize RGB pixels to a ``size`` x ``size`` model input.

    This is the one preprocessing function shared by training, export checks and inference, so
    the classifier sees the same pixels everywhere.

    Args:
        pixels: array of shape (H, W, 3), uint8.
        size: side of the square output.
        mode: ``squash`` (stretch), ``letterbox`` (fit, pad with ``pad_value``) or ``center_crop``.

    Returns:
        float32 array of shape (3, size, size) with values in [0, 1].

    Examples:
        >>> resize_for_model(np.zeros((10, 20, 3), np.uint8), 8, "letterbox").shape
        (3, 8, 8)
    """
    im = PILImage.fromarray(pixels)
    if mode == "squash":
        im = im.resize((size, size), PILImage.BILINEAR)
    elif mode == "letterbox":
        scale = size / max(im.size)
        nw, nh = max(1, round(im.width * scale)), max(1, round(im.height * scale))
        canvas = PILImage.new("RGB", (size, size), (pad_value,) * 3)
        canvas.paste(im.resize((nw, nh), PILImage.BILINEAR), ((size - nw) // 2, (size - nh) // 2))
        im = canvas
    elif mode == "center_crop":
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), PILImage.BILINEAR)
    else:
        raise ValueError(f"mode: expected squash, letterbox or center_crop, got {mode!r}")
    return (np.asarray(im, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()


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
