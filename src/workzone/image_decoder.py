"""The one decode policy of a service (:class:`ImageDecoder`): which bytes are decoded where.

Pillow on the CPU for any input (in killable worker processes for a server's untrusted bytes); on a CUDA device,
JPEGs deferred by their header and decoded a batch at a time by nvJPEG (or libjpeg threads). Used by the service,
the batch runner and the engine process (:mod:`workzone.cascade_process`), which decodes what the server deferred.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
from typing import Any, Callable, ContextManager, Sequence

from workzone.errors import InvalidImageError
from workzone.io.decode_pool import DecodeBudget, DecodePool
from workzone.io.images import DEFAULT_LIMITS, ImageHeader, ImageLimits, decode_image, probe_image
from workzone.types import Image

__all__ = ["ImageDecoder"]


class ImageDecoder:
    """The one decode policy of a service: Pillow on the CPU for any input; on a CUDA device with
    torchvision, batches of encoded bytes decoded by nvJPEG straight into GPU memory. With
    ``processes`` (the HTTP server's default), a caller's encoded bytes on the CPU are decoded in
    worker processes that are killed past a CPU budget (:mod:`workzone.io.decode_pool`).

    Args:
        device: the cascade's device (``cpu``, ``cuda``, ``cuda:N``).
        limits: size, memory and work limits every decoded image respects.
        gpu_decode: on CUDA, ``nvjpeg`` (fastest) or ``libjpeg`` (the batch's JPEGs decoded on CPU threads:
            the CPU path's exact pixels, which the object decision is sensitive to; see docs/gpu.md).
        processes: the decoder processes for untrusted bytes (:meth:`decode_bytes`) on the CPU, or None.
        for_engine: the cascade runs in an engine process on ``device``, which decodes the batch's JPEGs
            itself (:mod:`workzone.cascade_process`): on CUDA, JPEGs are deferred by their header alone and
            nothing here touches the device.
    """

    def __init__(self, device: str = "cpu", *, limits: ImageLimits = DEFAULT_LIMITS, gpu_decode: str = "nvjpeg",
                 processes: DecodePool | None = None, for_engine: bool = False) -> None:
        self.limits = limits
        self._device: Any = None
        self._defers: Callable[[Any], tuple[int, int] | None] | None = None
        if for_engine and device.startswith("cuda"):
            from workzone.accel.decode import nvjpeg_size

            self._defers = functools.partial(nvjpeg_size, limits=limits)
        else:
            self._device = _device_decoder(device, limits, 1.0 if gpu_decode == "libjpeg" else 0.0)
            self._defers = self._device.accepts if self._device is not None else None
        # nvJPEG (or libjpeg threads) decode a GPU server's JPEGs; the processes serve the CPU policy.
        self.processes = processes if self._defers is None else None

    def defers(self, data: Any) -> tuple[int, int] | None:
        """``(width, height)`` when ``data`` is a JPEG best decoded with its batch on the device (see
        :meth:`decode_each`), from its header alone; ``None`` when it must be decoded now."""
        return self._defers(data) if self._defers is not None else None

    def decode_each(self, blobs: Sequence[bytes], labels: Sequence[str]) -> list[Image | Exception]:
        """Decode a batch of JPEGs (on the device in one call where there is one, else one by one on the CPU
        within the limits); a file that fails is its exception, the others decoded."""
        if self._device is not None:
            return self._device.decode_each(blobs, labels)
        out: list[Image | Exception] = []
        for blob, label in zip(blobs, labels):
            try:
                out.append(decode_image(blob, limits=self.limits, source=label))
            except InvalidImageError as exc:
                out.append(exc)
        return out

    def decode(self, items: Sequence[Any], sources: Sequence[str | None] | None = None) -> list[Image]:
        """Decode ``items`` (path, bytes, base64, PIL image, numpy array, Image), in order.

        Raises:
            InvalidImageError: an item cannot be decoded or breaks a limit.
        """
        labels = list(sources) if sources is not None else [None] * len(items)
        if self._device is not None and items and all(isinstance(x, (bytes, bytearray, memoryview)) for x in items):
            return self._device.decode(items, [s or "<bytes>" for s in labels])
        return [decode_image(x, limits=self.limits, source=s) for x, s in zip(items, labels)]

    async def probe_bytes(self, data: bytes, source: str, budget: DecodeBudget, end: float | None) -> ImageHeader:
        """The header of encoded bytes, checked against every limit (in a decoder process, if any)."""
        if self.processes is not None:
            return await self.processes.probe(data, source, budget, end)
        return await asyncio.to_thread(probe_image, data, limits=self.limits, source=source)

    async def decode_bytes(self, data: bytes, source: str, budget: DecodeBudget, end: float | None,
                           cost_s: float = 0.0, memory: Callable[[], ContextManager[None]] | None = None) -> Image:
        """Decode encoded bytes: in a decoder process under ``budget`` (``cost_s``, the header's
        estimate, picks its lane; ``memory`` is held while it decodes), else with :meth:`decode` in a
        thread (the caller holds ``memory`` then)."""
        if self.processes is not None:
            return await self.processes.decode(data, source, budget, end, cost_s, memory)
        return (await asyncio.to_thread(self.decode, [data], [source]))[0]

    def close(self) -> None:
        if self._device is not None:
            self._device.close()
        if self.processes is not None:
            self.processes.close()


def _device_decoder(device: str, limits: ImageLimits, cpu_share: float = 0.0) -> Any:
    """A batched GPU decoder for ``device`` (:mod:`workzone.accel.decode`), or None on the CPU or without torch."""
    if not device.startswith("cuda") or importlib.util.find_spec("torchvision") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    from workzone.accel.decode import DeviceDecoder

    return DeviceDecoder(device, limits=limits, cpu_share=cpu_share, workers=min(16, len(os.sched_getaffinity(0))))
