"""onnxruntime plumbing shared by the ONNX stages: providers, session options, JSON sidecars.

Private: :mod:`workzone.stages.onnx_classifier`, :mod:`workzone.stages.onnx_detector` and
:mod:`workzone.stages.roadwork_detector` open their models through here, so that threads,
providers and error messages stay the same for all three.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from workzone._optional import require
from workzone.errors import ModelFileError

__all__ = ["providers_for", "open_session", "read_sidecar"]


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
                 feature: str = "ONNX models") -> Any:
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
