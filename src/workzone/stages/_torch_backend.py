"""The torch backend of the embedded ONNX stages ([gpu] extra): when to use it, and how to run it.

The ``onnx_classifier`` and ``roadwork_detector`` kinds read the same ``.onnx`` file on either
backend: onnxruntime (the default, CPU) or torch (:mod:`workzone.accel`: the graph's weights in a
torch module, bf16 on CUDA). ``backend: auto`` picks torch when the stage's device is CUDA and
torch sees a GPU (onnxruntime's CUDA provider is rarely installed), onnxruntime otherwise.
Nothing heavy is imported at module import.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
from pydantic import Field

from workzone.stages.base import StageParams
from workzone.types import Image

if TYPE_CHECKING:
    from workzone.accel.runner import TorchModelRunner

__all__ = ["Backend", "TorchBackendParams", "use_torch", "open_runner", "thresholded_precision", "torch_inputs"]

Backend = Literal["auto", "onnxruntime", "torch"]


class TorchBackendParams(StageParams):
    """Params shared by the stages that can run their ONNX model through torch."""

    backend: Backend = Field(default="auto", description="onnxruntime, torch ([gpu] extra), or auto: torch "
                                                         "when the stage's device is CUDA and torch sees a GPU")
    precision: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="torch backend: weights/activations dtype (auto: bf16 on CUDA, fp32 on CPU)")
    compile: bool = Field(default=False, description="torch backend: torch.compile the graph (pays on large "
                                                     "GPU batches; eager if compiling fails)")
    max_batch: int = Field(default=512, ge=1, le=8192, description="torch backend: images per forward")


def use_torch(backend: Backend, device: str) -> bool:
    """Whether a stage with this ``backend`` param on ``device`` runs through torch."""
    if backend != "auto":
        return backend == "torch"
    if not device.startswith("cuda") or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def thresholded_precision(params: TorchBackendParams, device: str) -> TorchBackendParams:
    """``params`` with ``precision: auto`` made fp16 on CUDA and fp32 on the CPU, for a model whose probabilities
    a decision thresholds: fp16's three more mantissa bits than the backend's bf16 keep it within the parity bound
    of the onnxruntime path."""
    if params.precision != "auto":
        return params
    return params.model_copy(update={"precision": "float16" if device.startswith("cuda") else "float32"})


def open_runner(path: Path, params: TorchBackendParams, device: str) -> "TorchModelRunner":
    """The model at ``path`` as a :class:`~workzone.accel.runner.TorchModelRunner` on ``device``."""
    from workzone.accel.runner import TorchModelRunner

    return TorchModelRunner(path, device=device, precision=params.precision, compile=params.compile,
                            max_batch=params.max_batch)


def torch_inputs(runner: "TorchModelRunner", images: Sequence[Image], size: int, mode: Any, *,
                 flip: bool = False) -> Any:
    """Model inputs for ``images`` on the runner's device (pixels already there stay there).

    With ``flip`` the batch holds 2N views: the N images, then their mirrors.
    """
    import torch

    from workzone.accel.decode import resize_batch

    x = resize_batch(images, size, mode, device=runner.device, dtype=runner.dtype)
    return torch.cat([x, torch.flip(x, dims=[3])]) if flip else x


def first_output(runner: "TorchModelRunner", x: Any) -> np.ndarray:
    """The runner's first output for ``x`` as float64 numpy."""
    return runner(x)[runner.output_names[0]].double().cpu().numpy()
