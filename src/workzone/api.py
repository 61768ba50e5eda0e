"""The synchronous Python API: ``workzone.load_pipeline("default").predict(image)``.

A thin blocking shell over the :class:`~workzone.service.DetectionService` that the server, the miner
and batch jobs use too: the service decodes (its decode policy: CPU, or nvJPEG on a CUDA device) and
runs the cascade; this class owns a private event loop in a background thread, where the service and
every stage live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from workzone._loop import LoopThread
from workzone.cascade import Cascade, EventCallback
from workzone.config.loader import load_pipeline_config
from workzone.config.schema import PipelineConfig
from workzone.io.images import DEFAULT_LIMITS, ImageLimits
from workzone.service import DetectionService
from workzone.types import Decision, Image

__all__ = ["Pipeline", "load_pipeline"]


class Pipeline:
    """A loaded cascade with a blocking API. Close it (or use ``with``) to free its models.

    Args:
        config: a validated pipeline (ignored when ``service`` is given).
        base_dir: folder its relative paths resolve against.
        device: ``cpu`` or ``cuda[:N]``.
        limits: limits every decoded image respects.
        extras: dependencies injected into the stages.
        service: an existing, not yet started service to drive instead of building one.
    """

    def __init__(self, config: PipelineConfig | None = None, base_dir: Path = Path("."), *, device: str = "cpu",
                 limits: ImageLimits = DEFAULT_LIMITS, extras: dict[str, Any] | None = None,
                 service: DetectionService | None = None) -> None:
        if service is None:
            if config is None:
                raise TypeError("Pipeline needs a config or a service")
            service = DetectionService.from_config(config, base_dir, device=device, extras=extras, limits=limits)
        self.service = service
        self._loop = LoopThread("workzone-loop")
        try:
            self._loop.run(self.service.start(serving=False))  # its batches go past the micro-batcher
        except BaseException:
            self._loop.stop()
            self.service.decoder.close()
            raise

    @property
    def config(self) -> PipelineConfig:
        return self.service.config

    @property
    def limits(self) -> ImageLimits:
        return self.service.limits

    @property
    def cascade(self) -> Cascade:
        return self.service.cascade

    def decode(self, items: Sequence[Any], sources: Sequence[str | None] | None = None) -> list[Image]:
        """Decode inputs with the service's decode policy (raises InvalidImageError on a bad one)."""
        return self.service.decoder.decode(items, sources)

    def predict(self, image: Any, *, deadline_s: float | None = None) -> Decision:
        """Decide one image (path, bytes, base64, PIL image, numpy array)."""
        return self.predict_batch([image], deadline_s=deadline_s)[0]

    def predict_batch(self, images: Sequence[Any], *, deadline_s: float | None = None,
                      on_event: EventCallback | None = None, run_all: bool = False) -> list[Decision]:
        """Decide many images at once; undecided images move through the tiers together."""
        return self.run_decoded(self.decode(images), deadline_s=deadline_s, on_event=on_event, run_all=run_all)

    def run_decoded(self, images: Sequence[Image], *, deadline_s: float | None = None,
                    on_event: EventCallback | None = None, run_all: bool = False) -> list[Decision]:
        return self._loop.run(self.service.run(images, deadline_s=deadline_s, on_event=on_event, run_all=run_all))

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
            self._loop.run(self.service.aclose(), timeout=30)
        finally:
            self._loop.stop()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
