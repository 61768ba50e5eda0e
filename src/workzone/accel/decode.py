"""JPEG bytes to model inputs on the device: batched nvJPEG decode, grouped resize, CPU fallback.

On CUDA, JPEGs are decoded in one batched call of ``torchvision.io.decode_jpeg`` (nvJPEG) straight
into device memory. Anything else (PNG, WebP, JPEGs with an EXIF rotation, CMYK, progressive files
nvJPEG rejects, images over the size limits) goes through :func:`workzone.io.images.decode_image`,
the CPU decoder with every guard, in a pool of worker threads (Pillow releases the GIL), and is
copied up from pinned memory without blocking. On the CPU, every image takes that path.

:func:`resize_batch` then makes model inputs the way :func:`workzone.io.images.resize_for_model`
does (squash, letterbox, centre crop; antialiased bilinear like Pillow's), one interpolate call per
distinct input size, so a batch of same-size 224 px subnet images costs one kernel, not N.
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Sequence

from workzone._optional import require
from workzone.accel.device_image import DeviceImage, image_tensor
from workzone.errors import InvalidImageError
from workzone.io.images import DEFAULT_LIMITS, ImageLimits, ResizeMode, decode_image
from workzone.types import Image

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceDecoder", "resize_batch", "jpeg_header", "nvjpeg_size"]

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_header(data: bytes) -> tuple[int, int, int, bool, bool] | None:
    """Read a JPEG's frame header without decoding.

    Returns:
        ``(width, height, components, progressive, has_exif)``, or ``None`` when ``data`` is not a
        JPEG or its markers are broken before the frame header.

    Examples:
        >>> jpeg_header(b"not a jpeg") is None
        True
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i, n, exif = 2, len(data), False
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            exif = True
        if marker in _SOF:
            if i + 10 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h, data[i + 9], marker == 0xC2, exif
        i += 2 + length
    return None


def nvjpeg_size(data: Any, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[int, int] | None:
    """``(width, height)`` when ``data`` is a JPEG that nvJPEG decodes as the CPU decoder would (no EXIF
    rotation, 1 or 3 components, within ``limits``), else ``None``. Reads the header only, needs no device."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) > limits.max_bytes:
        return None
    head = jpeg_header(bytes(data[:65536]) if len(data) > 65536 else bytes(data))
    if head is None:
        return None
    w, h, comps, _progressive, exif = head
    # EXIF may rotate the image (nvJPEG ignores it); CMYK and over-limit sizes need the CPU decoder.
    ok = (not exif and comps in (1, 3) and w * h <= limits.max_pixels and min(w, h) >= limits.min_side
          and (not limits.max_side or max(w, h) <= limits.max_side))
    return (w, h) if ok else None


class DeviceDecoder:
    """Decodes batches of encoded images into :class:`DeviceImage` objects on ``device``.

    Args:
        device: ``cuda``, ``cuda:N`` or ``cpu``.
        limits: the size guards of :func:`workzone.io.images.decode_image`.
        workers: CPU decode threads for the fallback path.
        cpu_share: fraction of the JPEGs of each batch decoded by the CPU workers while nvJPEG
            decodes the rest (both run at once; 0 sends every JPEG to nvJPEG).
    """

    def __init__(self, device: str = "cpu", *, limits: ImageLimits = DEFAULT_LIMITS, workers: int = 4,
                 cpu_share: float = 0.0) -> None:
        self.torch = require("torch", "gpu", "the GPU input path")
        self.device = device
        self.limits = limits
        self.cuda = device.startswith("cuda")
        self.cpu_share = cpu_share
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="workzone-decode")
        if self.cuda:
            self.tv_io = require("torchvision.io", "gpu", "nvJPEG decoding")

    def decode(self, items: Sequence[Any], sources: Sequence[str] | None = None) -> list[Image]:
        """Decode ``items`` (bytes for the fast path; paths, arrays ... go through the CPU decoder).

        Returns:
            One image per item, in order: :class:`DeviceImage` on CUDA, plain ``Image`` on the CPU.

        Raises:
            InvalidImageError: an item cannot be decoded or breaks a limit (names the item).
        """
        labels = list(sources) if sources is not None else [f"<bytes #{i}>" for i in range(len(items))]
        out: list[Image | None] = [None] * len(items)
        gpu_idx: list[int] = []
        if self.cuda:
            gpu_idx = [i for i, x in enumerate(items) if self._nvjpeg_ok(x)]
        n_cpu_jpeg = int(len(gpu_idx) * self.cpu_share)
        cpu_idx = sorted(set(range(len(items))) - set(gpu_idx[n_cpu_jpeg:]))
        futures = {i: self._pool.submit(self._decode_cpu, items[i], labels[i]) for i in cpu_idx}
        if gpu_idx[n_cpu_jpeg:]:
            for i, img in zip(gpu_idx[n_cpu_jpeg:], self._decode_gpu([items[i] for i in gpu_idx[n_cpu_jpeg:]],
                                                                       [labels[i] for i in gpu_idx[n_cpu_jpeg:]])):
                out[i] = img
        for i, fut in futures.items():
            out[i] = fut.result()
        return out  # type: ignore[return-value]

    def decode_each(self, blobs: Sequence[bytes], labels: Sequence[str]) -> list[Image | InvalidImageError]:
        """:meth:`decode` a batch of JPEGs that :meth:`accepts` passed; a file that fails (nvJPEG and then
        the CPU decoder) is returned as its :class:`InvalidImageError`, the others decoded."""
        try:
            return list(self.decode(list(blobs), list(labels)))
        except InvalidImageError:
            out: list[Image | InvalidImageError] = []
            for b, lab in zip(blobs, labels):
                try:
                    out.extend(self.decode([b], [lab]))
                except InvalidImageError as exc:
                    out.append(exc)
            return out

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def accepts(self, data: Any) -> tuple[int, int] | None:
        """``(width, height)`` when ``data`` is a JPEG nvJPEG decodes as the CPU decoder would (see
        :func:`nvjpeg_size`) and this decoder is on CUDA, else ``None``. Reads the header only."""
        return nvjpeg_size(data, self.limits) if self.cuda else None

    def _nvjpeg_ok(self, data: Any) -> bool:
        return self.accepts(data) is not None

    def _decode_cpu(self, data: Any, label: str) -> Image:
        img = decode_image(data, limits=self.limits, source=label)
        if not self.cuda:
            return img
        return DeviceImage(image_tensor(img, self.device), img.source, img.original_size)

    def _decode_gpu(self, blobs: list[Any], labels: list[str]) -> list[Image]:
        torch, tv_io = self.torch, self.tv_io
        tensors = [torch.frombuffer(bytearray(b) if not isinstance(b, bytearray) else b, dtype=torch.uint8)
                   for b in blobs]
        try:
            decoded = tv_io.decode_jpeg(tensors, mode=tv_io.ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            # One bad file fails the whole batched call: decode one by one, the CPU decoder naming the culprit.
            return [self._decode_one(t, b, lab) for t, b, lab in zip(tensors, blobs, labels)]
        return [DeviceImage(t, lab, (int(t.shape[2]), int(t.shape[1]))) for t, lab in zip(decoded, labels)]

    def _decode_one(self, tensor: Any, blob: Any, label: str) -> Image:
        try:
            t = self.tv_io.decode_jpeg(tensor, mode=self.tv_io.ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return self._decode_cpu(bytes(blob), label)
        return DeviceImage(t, label, (int(t.shape[2]), int(t.shape[1])))


def resize_batch(images: Sequence[Image], size: int, mode: ResizeMode = "squash", *, device: str = "cpu",
                 dtype: Any = None, pad_value: int = 0, flip: bool = False) -> "torch.Tensor":
    """Model inputs for a batch: float [N, 3, size, size] in [0, 1] on ``device``.

    Matches :func:`workzone.io.images.resize_for_model` up to Pillow's rounding to uint8 (bilinear
    with antialiasing when shrinking, as Pillow does).

    Args:
        images: decoded images (device tensors are used in place).
        size: side of the square output.
        mode: ``squash``, ``letterbox`` or ``center_crop``.
        device: where the output lives.
        dtype: output dtype (default float32).
        pad_value: letterbox fill, 0..255.
        flip: also mirror each image left-right (the output then holds the flipped views only).

    Raises:
        InvalidImageError: never for valid ``Image`` objects; ValueError for an unknown mode.
    """
    torch = require("torch", "gpu", "the GPU input path")
    F = torch.nn.functional
    dtype = dtype or torch.float32
    if mode not in ("squash", "letterbox", "center_crop"):
        raise ValueError(f"mode: expected squash, letterbox or center_crop, got {mode!r}")
    out = torch.full((len(images), 3, size, size), pad_value / 255.0, dtype=dtype, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((img.height, img.width), []).append(i)
    for (h, w), idx in groups.items():
        x = torch.stack([image_tensor(images[i], device) for i in idx])
        if mode == "center_crop":
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            x = x[:, :, top:top + side, left:left + side]
            h = w = side
        if mode == "letterbox":
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        else:
            nh, nw = size, size
        # Resampling runs in float32 (antialiased kernels lack some reduced-precision variants).
        x = x.float() if (nh, nw) != (h, w) else x.to(dtype)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
            # Pillow rounds to uint8 after resampling; so do we, so that both paths see the same pixels.
            x = x.round_().clamp_(0, 255)
        x = (x / 255.0).to(dtype)
        if flip:
            x = torch.flip(x, dims=[3])
        top, left = (size - nh) // 2, (size - nw) // 2
        ids = torch.tensor(idx, device=device)
        if (nh, nw) == (size, size):
            out.index_copy_(0, ids, x)
        else:
            out[ids, :, top:top + nh, left:left + nw] = x
    return out
