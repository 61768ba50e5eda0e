"""The lifecycle every in-process model stage shares (ONNX, OCR, transformers, Ultralytics, RF-DETR).

:class:`ModelStage` holds the model, its device and a lock, loads and predicts in a worker thread,
and refuses to predict before :meth:`~ModelStage.load`. A subclass writes only ``_load_sync``
(build ``self._model``) and ``_predict_sync`` (score a batch); a stage that reads earlier stages' evidence
writes ``_predict_evidence_sync`` and ``_warmup_evidence`` instead of ``_predict_sync``. Warm-up, the
evidence's length check and closing the model (its ``close()``, when it has one) are :class:`ModelStage`'s
alone. :func:`local_weights` and
:func:`torch_device` resolve the weights file and the device the same way for every family.
Nothing heavy is imported at module import.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Sequence

import numpy as np

from workzone._optional import require
from workzone.errors import ModelFileError, StageError
from workzone.stages.base import Stage
from workzone.types import EarlierReports, Image, StageOutput

__all__ = ["ModelStage", "local_weights", "torch_device"]


class ModelStage(Stage):
    """A stage around one in-process model, built by ``_load_sync`` and run by ``_predict_sync``.

    Attributes:
        _model: the loaded model, ``None`` before :meth:`load` and after :meth:`aclose`.
        _device: where it runs (set by ``_load_sync``).
        _lock: serialises calls into the model: frameworks keep per-call state on the model object,
            and a second concurrent forward would only contend for the same cores or GPU.
    """

    #: Batch sizes of the warm-up runs, one run each. A model behind a
    #: :class:`~workzone.stages._onnx.SessionPool` warms ``(1, 2)``: a lone image runs on its wide session,
    #: two on the workers' narrow one, and each session's first run is the slow one.
    warmup_batches: ClassVar[tuple[int, ...]] = (1,)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None
        self._device = "cpu"
        self._lock = threading.Lock()

    async def load(self) -> None:
        await self.run_blocking(self._load_sync)

    def _load_sync(self) -> None:
        """Build ``self._model`` (and anything else predict needs); runs in a worker thread."""
        raise NotImplementedError

    async def warmup(self) -> None:
        """One throw-away batch of blank images per size in :attr:`warmup_batches`, through the whole path."""
        for n in self.warmup_batches:
            await self._blank_batch(n)

    async def _blank_batch(self, n: int) -> None:
        await self.run_blocking(self._predict_evidence_sync, [Image(np.zeros((64, 64, 3), np.uint8))] * n,
                                self._warmup_evidence(n))

    async def warm_batches(self, largest: int) -> None:
        """One blank batch per bucket of the stage's torch runner (none without one, or unpadded)."""
        runner = self._torch_runner()
        rows = self._rows_per_image()
        for size in [] if runner is None else runner.warm_sizes(largest * rows):
            await self._blank_batch(-(-size // rows))

    @property
    def cold_runs(self) -> int:
        runner = self._torch_runner()
        return 0 if runner is None else runner.cold_runs

    def _torch_runner(self) -> Any:
        """The stage's :class:`~workzone.accel.runner.TorchModelRunner` on the torch backend, else None."""
        return None

    def _rows_per_image(self) -> int:
        """Rows of the runner's batch per image (2 with mirror views)."""
        return 1

    async def predict(self, batch: Sequence[Image], evidence: EarlierReports | None = None) -> list[StageOutput]:
        self.require_loaded(self._model)
        batch = list(batch)
        if evidence is not None and len(evidence) != len(batch):
            raise StageError(self.name, f"got evidence for {len(evidence)} images and {len(batch)} images")
        return await self.run_blocking(self._predict_evidence_sync, batch, evidence)

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        """Score a batch from its pixels; runs in a worker thread."""
        raise NotImplementedError

    def _predict_evidence_sync(self, batch: list[Image], evidence: EarlierReports | None) -> list[StageOutput]:
        """Score a batch given the earlier stages' evidence (one entry per image, or ``None``); runs in a worker
        thread. The default reads pixels only: :meth:`_predict_sync`."""
        return self._predict_sync(batch)

    def _warmup_evidence(self, n: int) -> EarlierReports | None:
        """The evidence of a warm-up batch of ``n`` blank images: a stage that reads evidence gives some that makes
        its model run (without it, it would abstain and leave the model cold)."""
        return None

    async def aclose(self) -> None:
        model, self._model = self._model, None
        close = getattr(model, "close", None)
        if callable(close):  # a session pool's or runner's worker threads
            close()


def local_weights(stage: Stage, model: str, *, allow_download: bool, fetcher: str,
                  what: str = "model file") -> str:
    """The weights file next to the pipeline, or a published name when downloads are allowed.

    Args:
        stage: the stage (for its name and context).
        model: the ``model`` param: a path, or a bare published name such as ``yolo11n.pt``.
        allow_download: the stage's ``allow_download`` param.
        fetcher: the library that would download it, for the message ("Ultralytics", "rfdetr").
        what: what the file is called in the message ("model file", "checkpoint").

    Returns:
        The resolved local path, or ``model`` itself for the library to fetch.

    Raises:
        ModelFileError: the file is not there and downloading is not allowed (or ``model`` is a
            path, which no library can fetch).
    """
    local = stage.context.resolve(model)
    if local.is_file():
        return str(local)
    if allow_download and "/" not in model:
        return model
    raise ModelFileError(f"stage {stage.name!r}: {what} {local} does not exist (set allow_download: true "
                         f"to let {fetcher} fetch a published checkpoint by name)")


def torch_device(stage: Stage, extra: str, purpose: str = "", *, cuda_only: bool = False) -> str:
    """The context's device if torch can use it, else ``cpu``.

    Args:
        stage: the stage (for its context's device).
        extra: the workzone extra that installs torch for this stage, for the missing-extra message.
        purpose: what needs torch, for the same message.
        cuda_only: the family runs on CUDA or the CPU only, so any other device becomes ``cpu``.
    """
    torch = require("torch", extra, purpose)
    want = stage.context.device
    if want.startswith("cuda"):
        return want if torch.cuda.is_available() else "cpu"
    if cuda_only or (want == "mps" and not torch.backends.mps.is_available()):
        return "cpu"
    return want
