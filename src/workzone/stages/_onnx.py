"""onnxruntime plumbing shared by the ONNX stages: providers, session options, JSON sidecars.

Private: :mod:`workzone.stages.onnx_classifier`, :mod:`workzone.stages.onnx_detector` and
:mod:`workzone.stages.roadwork_detector` open their models through here, so that threads,
providers and error messages stay the same for all three.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar

from pydantic import Field

from workzone._optional import require
from workzone.errors import ModelFileError
from workzone.stages.base import StageParams

__all__ = ["providers_for", "open_session", "read_sidecar", "SessionPool", "Parallel", "CpuRunParams"]

#: How a stage spreads a batch's onnxruntime runs over its threads (see :class:`SessionPool`).
Parallel = Literal["images", "operators"]
_In = TypeVar("_In")
_Mid = TypeVar("_Mid")
_Out = TypeVar("_Out")


def providers_for(device: str, *, feature: str = "ONNX models") -> list[str]:
    """onnxruntime execution providers for a device, best first.

    Args:
        device: the stage's device (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).
        feature: what needs onnxruntime, for the missing-extra message.

    Returns:
        ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` when a CUDA device is asked for and
        this onnxruntime build has it, else ``["CPUExecutionProvider"]``.
    """
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        ort = require("onnxruntime", "default", feature)
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
    return providers


def open_session(path: Path, *, threads: int = 0, device: str = "cpu", providers: Sequence[str] | None = None,
                 inputs: Sequence[str] | None = None, prefix: str = "", hint: str = "",
                 feature: str = "ONNX models", spatial: int | None = None) -> Any:
    """Open an ONNX model with one inter-op thread and ``threads`` intra-op threads.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads; 0 = every core.
        device: picks the providers (see :func:`providers_for`) unless ``providers`` is given.
        providers: explicit onnxruntime providers.
        inputs: when given, the exact input names the model must have.
        prefix: put before every error message (e.g. ``"stage 'cones': "``).
        hint: appended to the missing-file message (how to get the file).
        feature: what needs onnxruntime, for the missing-extra message.
        spatial: the one height and width the caller feeds: where the first input's last two axes are symbolic
            (a graph exported with dynamic axes), they are fixed to it, so onnxruntime plans its kernels for that
            shape (on the object detector: about half the CPU per image, same outputs;
            benchmarks/results/dynamic_axes.md).

    Returns:
        The ``onnxruntime.InferenceSession``.

    Raises:
        ModelFileError: the file is missing, onnxruntime cannot load it, or its inputs differ.
    """
    ort = require("onnxruntime", "default", feature)
    if not path.is_file():
        raise ModelFileError(f"{prefix}model file {path} does not exist{hint}")
    opts = ort.SessionOptions()
    # The cores this process may run on (a container or taskset can allow fewer than the host has).
    opts.intra_op_num_threads = threads or len(os.sched_getaffinity(0)) or 1
    # Batches are serialised by the stages; parallel graph branches would only oversubscribe.
    opts.inter_op_num_threads = 1
    # No CPU memory arena: the arena grows to the largest batch's activations and never shrinks (a
    # server under load kept >1 GB after it); without it large buffers go back to the OS per run.
    opts.enable_cpu_mem_arena = False
    chosen = list(providers) if providers is not None else providers_for(device, feature=feature)
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
        free = [d for d in session.get_inputs()[0].shape[-2:] if isinstance(d, str)] if spatial else []
        if free:
            for name in free:
                opts.add_free_dimension_override_by_name(name, spatial)
            session = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ModelFileError(f"{prefix}cannot load {path}: {exc}") from exc
    if inputs is not None:
        names = [i.name for i in session.get_inputs()]
        if names != list(inputs):
            want = ", ".join(repr(n) for n in inputs)
            raise ModelFileError(f"{prefix}{path} must have input(s) named {want}, has {names}")
    return session


def read_sidecar(model_path: Path) -> dict:
    """The JSON sidecar next to a model (``model.onnx`` -> ``model.json``), or ``{}`` if there is none.

    Raises:
        ModelFileError: the sidecar exists but is not valid JSON.
    """
    side = model_path.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{side}: not valid JSON ({exc})") from exc



class CpuRunParams(StageParams):
    """Params of a stage whose onnxruntime runs go through a :class:`SessionPool`."""

    threads: int = Field(default=0, ge=0, le=64, description="CPU threads of the onnxruntime runs (0 = all cores)")
    parallel: Parallel = Field(default="images", description="images: a batch's runs go to `threads` workers at "
                               "once, one onnxruntime thread each; operators: one run at a time over `threads` "
                               "intra-op threads")


class SessionPool:
    """One ONNX model, run over ``threads`` CPU threads either by image or by operator.

    ``parallel="images"`` (the default of the stages that use it): a batch's runs go to ``threads`` worker threads
    at once, each run on one onnxruntime thread, and each worker also makes its run's inputs (Pillow and
    onnxruntime release the GIL). Why: on the 2-core machine runs of one image on one thread used less CPU per
    image than runs of 4 over two intra-op threads, which also wait at every operator for the slower thread when
    other processes share the cores; the outputs are bit-identical (``benchmarks/results/bench_cpu.md``,
    ``cpu_parity.md``). A lone run still uses every thread (its latency would double on one).
    ``parallel="operators"``: runs one after another, each over ``threads`` intra-op threads, the next run's
    inputs made meanwhile on one thread (the scheme before).

    Runs of one pool are serialised between callers: each batch already uses every thread.

    Args:
        path: the ``.onnx`` file.
        threads: CPU threads (0 = every core this process may use).
        parallel: ``"images"`` or ``"operators"``.
        **open_kwargs: passed to :func:`open_session` (``providers``, ``inputs``, ``prefix``, ``hint``, ``feature``).

    Raises:
        ModelFileError: as :func:`open_session`.
    """

    def __init__(self, path: Path, *, threads: int = 0, parallel: Parallel = "images", **open_kwargs: Any) -> None:
        self.threads = threads or len(os.sched_getaffinity(0)) or 1
        self.parallel = parallel
        self.wide = open_session(path, threads=self.threads, **open_kwargs)
        # A second session of the same (small) model with one intra-op thread: the workers share it (runs are
        # thread-safe), and the wide one stays for a lone run.
        by_image = parallel == "images" and self.threads > 1
        self.narrow = open_session(path, threads=1, **open_kwargs) if by_image else None
        self._workers = ThreadPoolExecutor(max_workers=self.threads if by_image else 1,
                                           thread_name_prefix=f"workzone-{path.stem}")
        self._lock = threading.Lock()

    def map(self, prepare: Callable[[_In], _Mid], run: Callable[[Any, _Mid], _Out], items: Sequence[_In]) -> list[_Out]:
        """``run(session, prepare(item))`` for every item, in order.

        Args:
            prepare: makes one run's inputs (in a worker thread).
            run: one onnxruntime run on the session it is given.
            items: one per run.
        """
        items = list(items)
        with self._lock:
            if self.narrow is not None and len(items) > 1:
                narrow = self.narrow
                return list(self._workers.map(lambda it: run(narrow, prepare(it)), items))
            out: list[_Out] = []
            ahead = self._workers.submit(prepare, items[0]) if items else None
            for k in range(len(items)):
                x = ahead.result()  # type: ignore[union-attr]
                ahead = self._workers.submit(prepare, items[k + 1]) if k + 1 < len(items) else None
                out.append(run(self.wide, x))
            return out

    def close(self) -> None:
        """Stop the worker threads (the sessions are freed with the pool)."""
        self._workers.shutdown(wait=False)
