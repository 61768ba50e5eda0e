"""One ONNX model run by torch on a device: dtype, channels-last, optional compile, batch buckets.

``TorchModelRunner`` is the seam the stages use when their ``backend`` is ``torch``: it builds the
module from the ONNX file (:func:`workzone.accel.onnx_graph.load_onnx_module`), moves it to the
device, and runs batches of model inputs. With ``compile`` on, and on CUDA, batches are padded up to
a few bucket sizes so ``torch.compile`` (default mode: "max-autotune" crashed on the H100 probe) builds
a handful of graphs instead of one per batch size, and CUDA chooses kernels for a handful of shapes.

The first run of a shape is slow (a compile: about a minute per graph on the 2-core CPU; a kernel
choice), and it is not what the batch's images cost: :attr:`TorchModelRunner.cold_runs` counts those
runs, so that a server does not charge them to its clients (:mod:`workzone.client_costs`), and
:meth:`TorchModelRunner.warm_sizes` names the batches that run every bucket a server will use before
it says it is ready.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from workzone._optional import require
from workzone.accel.onnx_graph import load_onnx_module
from workzone.errors import ModelFileError

if TYPE_CHECKING:
    import torch

__all__ = ["TorchModelRunner", "Precision", "resolve_device", "default_precision", "allow_recompiles"]

Precision = Literal["auto", "float32", "float16", "bfloat16"]


def resolve_device(device: str) -> str:
    """``device`` when torch can use it, else ``cpu`` (a CUDA pipeline still runs on a CPU-only host)."""
    torch = require("torch", "gpu", "the torch backend")
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    return device


def default_precision(device: str) -> str:
    """bf16 on CUDA (tensor cores, same exponent range as fp32), fp32 on the CPU (exact parity)."""
    return "bfloat16" if device.startswith("cuda") else "float32"


class TorchModelRunner:
    """An ONNX graph as a torch module on ``device``.

    Args:
        path: the ``.onnx`` file.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (falls back to ``cpu`` without CUDA).
        precision: weights and activations dtype; ``auto`` = bf16 on CUDA, fp32 on the CPU.
        channels_last: NHWC memory layout for 4-D inputs (faster convolutions on tensor cores).
        compile: wrap the module in ``torch.compile`` (default mode); a failure to compile falls
            back to eager, recorded in :attr:`notes`.
        max_batch: the largest batch one forward runs; larger inputs are split.
        pad: pad batches up to power-of-two buckets (None: when compiled or on CUDA, where a batch
            runs at the cost of launches, not of its rows; on the CPU in eager mode every row costs).

    Attributes:
        device: where the module runs.
        input_name: the graph's (single) input name.
        notes: what was chosen (dtype, compile outcome), for ``describe()`` and benchmark files.
        cold_runs: forwards that ran a shape for the first time (a compile, a kernel choice).
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", precision: Precision = "auto",
                 channels_last: bool = True, compile: bool = False, max_batch: int = 1024,
                 pad: bool | None = None) -> None:
        torch = require("torch", "gpu", "the torch backend")
        self.device = resolve_device(device)
        dtype = default_precision(self.device) if precision == "auto" else precision
        module = load_onnx_module(path, dtype=dtype)
        if len(module.input_names) != 1:
            raise ModelFileError(f"{path}: the torch backend runs single-input models, got {module.input_names}")
        self.input_name = module.input_names[0]
        self.output_names = module.output_names
        self.dtype = module.compute_dtype
        self.channels_last = channels_last
        self.max_batch = max_batch
        module = module.to(self.device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._module = module
        self._forward: Any = module
        self.notes: list[str] = [f"torch {torch.__version__} on {self.device}, {dtype}"
                                 + (", channels-last" if channels_last else "")]
        self.compiled = False
        if compile:
            try:
                # Every graph module shares one forward code object, so each compiled model counts
                # against dynamo's per-code recompile limit (8 by default): allow a few dozen.
                allow_recompiles(torch)
                self._forward = torch.compile(module)
                self.compiled = True
                self.notes.append("torch.compile (default mode), batches padded to power-of-two buckets")
            except Exception as exc:  # noqa: BLE001 - compile is an optimisation; eager is always right
                self.notes.append(f"torch.compile unavailable ({type(exc).__name__}: {exc}); eager")
        self.pads = (compile or self.device.startswith("cuda")) if pad is None else pad
        if self.pads and not self.compiled:
            self.notes.append("batches padded to power-of-two buckets")
        # One-image batches on the CPU stay one image (every padded row costs a row's compute there).
        self._least = 8 if self.device.startswith("cuda") else 1
        self.cold_runs = 0
        self._shapes: set[tuple[int, ...]] = set()
        self._lock = threading.Lock()

    def warm_sizes(self, largest: int) -> list[int]:
        """Batch sizes whose runs leave every batch of up to ``largest`` images on a shape already run:
        one per bucket when batches are padded, none otherwise (a shape per batch size: too many)."""
        if not self.pads:
            return []
        return sorted({_bucket(n, self.max_batch, self._least) for n in range(1, min(largest, self.max_batch) + 1)})

    def __call__(self, x: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        """Run a float batch [N, C, H, W] (any float dtype, on any device); outputs stay on the device.

        Returns:
            ``{output name: float32 tensor with N rows}``.
        """
        torch = require("torch", "gpu", "the torch backend")
        n = int(x.shape[0])
        parts: list[dict[str, Any]] = []
        with self._lock, torch.inference_mode():
            for i in range(0, n, self.max_batch):
                chunk = x[i:i + self.max_batch].to(self.device, self.dtype, non_blocking=True)
                m = int(chunk.shape[0])
                if self.pads:
                    chunk = _pad_batch(torch, chunk, _bucket(m, self.max_batch, self._least))
                if self.channels_last and chunk.dim() == 4:
                    chunk = chunk.contiguous(memory_format=torch.channels_last)
                shape = tuple(chunk.shape)
                if shape not in self._shapes:  # counted before it runs: a batch beside it ends during it
                    self._shapes.add(shape)
                    self.cold_runs += 1
                try:
                    out = self._forward(chunk)
                except Exception as exc:  # noqa: BLE001 - compiling happens on the first call; eager is always right
                    if not self.compiled:
                        raise
                    self.notes.append(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); eager")
                    self._forward, self.compiled = self._module, False
                    chunk = chunk[:m]
                    out = self._forward(chunk)
                parts.append({k: v[:m] for k, v in out.items()})
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in self.output_names}

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """The first output for a float32 numpy batch, as a float64 numpy array (the onnxruntime seam)."""
        torch = require("torch", "gpu", "the torch backend")
        out = self(torch.from_numpy(np.ascontiguousarray(x, np.float32)))[self.output_names[0]]
        return out.double().cpu().numpy()


def allow_recompiles(torch: Any, limit: int = 64) -> None:
    """Raise dynamo's per-code recompile limit (8 by default) to at least ``limit``: past it, a function silently
    runs eager. A process-wide setting of torch's, which only ever goes up here."""
    dyn = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(dyn, key):
            setattr(dyn, key, max(getattr(dyn, key), limit))


def _bucket(n: int, cap: int, least: int = 8) -> int:
    """The smallest power of two >= n (at least ``least``), capped at ``cap``.

    Examples:
        >>> _bucket(3, 512), _bucket(3, 512, 1), _bucket(33, 512), _bucket(600, 512)
        (8, 4, 64, 600)
    """
    b = least
    while b < n:
        b *= 2
    return min(b, max(cap, n))


def _pad_batch(torch: Any, x: Any, size: int) -> Any:
    if x.shape[0] == size:
        return x
    pad = x.new_zeros((size - x.shape[0],) + tuple(x.shape[1:]))
    return torch.cat([x, pad])
