"""The synchronous Python API: ``workzone.load_pipeline("default").predict(image)``.

The cascade is async (stages overlap, remote stages share a client), so the sync facade owns a
private event loop in a background thread; every stage lives on that loop.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Iterable, Sequence

from workzone._loop import LoopThread
from workzone.cascade import Cascade, EventCallback
from workzone.config.loader import load_pipeline_config
from workzone.config.schema import PipelineConfig
from workzone.io.images import DEFAULT_LIMITS, ImageLimits, decode_image
from workzone.types import Decision, Image

__all__ = ["Pipeline", "load_pipeline"]

class Pipeline:
    """A loaded cascade with a blocking API. Close it (or use ``with``) to free its models."""

    def __init__(self, config: PipelineConfig, base_dir: Path, *, device: str = "cpu",
                 limits: ImageLimits = DEFAULT_LIMITS, extras: dict[str, Any] | None = None) -> None:
        self.config = config
        self.limits = limits
        self.cascade = Cascade.from_config(config, base_dir=base_dir, device=device, extras=extras)
        # On a CUDA device with torch, encoded bytes are decoded in batches straight into GPU memory.
        self._decoder = _device_decoder(device, limits)
        self._loop = LoopThread("workzone-loop")
        try:
            self._loop.run(self.cascade.start())
        except BaseException:
            self._loop.stop()
            raise

    def predict(self, image: Any, *, deadline_s: float | None = None) -> Decision:
        """Decide one image (path, bytes, base64, PIL image, numpy array)."""
        return self.predict_batch([image], deadline_s=deadline_s)[0]

    def predict_batch(self, images: Sequence[Any], *, deadline_s: float | None = None,
                      on_event: EventCallback | None = None, run_all: bool = False) -> list[Decision]:
        """Decide many images at once; undecided images move through the tiers together."""
        if self._decoder is not None and all(isinstance(x, (bytes, bytearray, memoryview)) for x in images):
            decoded = self._decoder.decode(images)
        else:
            decoded = [decode_image(x, limits=self.limits) for x in images]
        return self.run_decoded(decoded, deadline_s=deadline_s, on_event=on_event, run_all=run_all)

    def run_decoded(self, images: Sequence[Image], *, deadline_s: float | None = None,
                    on_event: EventCallback | None = None, run_all: bool = False) -> list[Decision]:
        return self._loop.run(self.cascade.run(images, deadline_s=deadline_s, on_event=on_event, run_all=run_all))

    def iter_predict(self, images: Iterable[Any], batch_size: int = 8) -> Iterable[Decision]:
        """Stream decisions over a long iterable, ``batch_size`` images at a time."""
        chunk: list[Any] = []
        for item in images:
            chunk.append(item)
            if len(chunk) == batch_size:
                yield from self.predict_batch(chunk)
                chunk = []
        if chunk:
            yield from self.predict_batch(chunk)

    def close(self) -> None:
        try:
            self._loop.run(self.cascade.aclose(), timeout=30)
        finally:
            self._loop.stop()
            if self._decoder is not None:
                self._decoder.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _device_decoder(device: str, limits: ImageLimits) -> Any:
    """A batched GPU decoder for ``device`` (:mod:`workzone.accel.decode`), or None on the CPU or without torch."""
    if not device.startswith("cuda") or importlib.util.find_spec("torchvision") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    from workzone.accel.decode import DeviceDecoder

    return DeviceDecoder(device, limits=limits)


def load_pipeline(ref: str | Path = "default", *, device: str = "cpu", limits: ImageLimits = DEFAULT_LIMITS,
                  extras: dict[str, Any] | None = None) -> Pipeline:
    """Load a pipeline by built-in name (``default``) or YAML path, and start its stages.

    Raises:
        ConfigError: the pipeline does not validate.
        MissingExtraError: a stage needs an optional dependency that is not installed.
        StageError / ModelFileError: a stage failed to load.
    """
    config, path = load_pipeline_config(ref)
    return Pipeline(config, path.parent, device=device, limits=limits, extras=extras)
