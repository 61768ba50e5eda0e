"""An :class:`~workzone.types.Image` whose pixels live on the torch device.

The GPU path decodes JPEG bytes straight into device memory; the cascade and every stage still
receive ``Image`` objects. Stages with a torch backend read :attr:`DeviceImage.tensor` and never
copy the pixels back; any other stage (OCR, a remote VLM) reads :attr:`DeviceImage.pixels`, which
downloads them once, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from workzone.types import Image

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceImage", "EncodedImage", "image_tensor", "upload"]


class _PixelsLater(Image):
    """An Image whose numpy pixels are made on first use (and kept); compared by identity."""

    def __init__(self, source: str, original_size: tuple[int, int] | None) -> None:
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "original_size", original_size)
        object.__setattr__(self, "_pixels", None)

    def _make_pixels(self) -> np.ndarray:
        raise NotImplementedError

    @property  # type: ignore[override]
    def pixels(self) -> np.ndarray:
        """(H, W, 3) uint8 numpy pixels, made the first time they are asked for."""
        if self._pixels is None:
            object.__setattr__(self, "_pixels", self._make_pixels())
        return self._pixels

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__


class DeviceImage(_PixelsLater):
    """RGB uint8 pixels as a [3, H, W] tensor on a device; numpy pixels on demand (copied down once).

    Args:
        tensor: uint8 tensor of shape (3, H, W), RGB, on any device.
        source: a label for reports.
        original_size: (width, height) before any downscale on decode.
    """

    def __init__(self, tensor: "torch.Tensor", source: str = "<bytes>",
                 original_size: tuple[int, int] | None = None) -> None:
        if tensor.dim() != 3 or tensor.shape[0] != 3 or str(tensor.dtype) != "torch.uint8":
            raise ValueError(f"DeviceImage.tensor: expected uint8 tensor of shape (3, H, W), "
                             f"got {tensor.dtype} {tuple(tensor.shape)}")
        object.__setattr__(self, "tensor", tensor)
        super().__init__(source, original_size)

    def _make_pixels(self) -> np.ndarray:
        return self.tensor.permute(1, 2, 0).contiguous().cpu().numpy()

    @property
    def width(self) -> int:
        return int(self.tensor.shape[2])

    @property
    def height(self) -> int:
        return int(self.tensor.shape[1])

    def __repr__(self) -> str:
        return f"DeviceImage({self.width}x{self.height} on {self.tensor.device}, source={self.source!r})"


class EncodedImage(_PixelsLater):
    """A JPEG not decoded yet: the service hands these to the device decoder a whole batch at a time.

    Its size comes from the JPEG header (:meth:`workzone.accel.decode.DeviceDecoder.accepts`);
    :attr:`pixels`, if anything asks before the batch decode, decodes on the CPU with every guard.

    Args:
        data: the JPEG bytes.
        source: a label for reports.
        size: (width, height) from the header.
    """

    def __init__(self, data: bytes, source: str, size: tuple[int, int]) -> None:
        object.__setattr__(self, "data", data)
        super().__init__(source, size)

    def _make_pixels(self) -> np.ndarray:
        from workzone.io.images import decode_image

        return decode_image(self.data, source=self.source).pixels

    @property
    def width(self) -> int:
        return int(self.original_size[0])  # type: ignore[index]

    @property
    def height(self) -> int:
        return int(self.original_size[1])  # type: ignore[index]

    def __repr__(self) -> str:
        return f"EncodedImage({self.width}x{self.height}, {len(self.data)} bytes, source={self.source!r})"


def image_tensor(img: Image, device: str) -> Any:
    """A [3, H, W] uint8 tensor of ``img`` on ``device`` (no copy when it already is a DeviceImage there)."""
    import torch

    t = getattr(img, "tensor", None)
    if t is not None:
        return t if str(t.device) == str(torch.device(device)) else t.to(device, non_blocking=True)
    return upload(torch.from_numpy(np.ascontiguousarray(img.pixels)).permute(2, 0, 1), device)


def upload(t: "torch.Tensor", device: Any) -> "torch.Tensor":
    """A small host tensor on ``device``: from pinned memory on CUDA, so the copy does not wait for the device's
    queue to drain (a pageable upload does, and the host then stops queueing work)."""
    if str(device).startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t if str(t.device) == str(device) else t.to(device)  # no operator for a tensor already there
