"""ONNX export of the classifier, the parity check, and evaluation through onnxruntime.

Contract (what the cascade's ``onnx_classifier`` stage relies on): input ``image`` float32
[N, 3, S, S] RGB in [0, 1] (ImageNet normalisation inside the graph), output ``logit`` float32
[N], dynamic N. Pixels reach the graph only through :func:`workzone.io.images.resize_for_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from workzone.io.images import ResizeMode, resize_for_model

__all__ = ["export_onnx", "onnx_logits", "check_parity", "write_sidecar", "json_safe"]


def export_onnx(model, path: str | Path, *, size: int = 224, opset: int = 17) -> Path:  # noqa: ANN001
    """Export ``model`` (float (N,3,S,S) in [0,1] -> (N,) logits) to ONNX with a dynamic batch.

    Args:
        model: the torch module; moved to CPU float32 and put in eval mode.
        path: the .onnx file to write.
        size: input side S.
        opset: ONNX opset.

    Returns:
        The path written.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").float().eval()
    dummy = torch.rand(2, 3, size, size)
    # The TorchScript exporter gives a single self-contained file with plain dynamic axes; the
    # dynamo exporter may split weights into an external-data file.
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["logit"],
        dynamic_axes={"image": {0: "N"}, "logit": {0: "N"}},
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )
    return path


def onnx_logits(
    onnx_path: str | Path,
    pixels: Sequence[np.ndarray],
    *,
    size: int,
    mode: ResizeMode,
    batch_size: int = 32,
    threads: int = 0,
) -> np.ndarray:
    """Logits of uint8 RGB images through ``resize_for_model`` + onnxruntime (the serving path).

    Args:
        onnx_path: the model file.
        pixels: images (H, W, 3) uint8.
        size: input side.
        mode: resize mode from the sidecar.
        batch_size: images per run.
        threads: intra-op threads (0 lets onnxruntime choose).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(pixels), batch_size):
        x = np.stack([resize_for_model(p, size, mode) for p in pixels[i : i + batch_size]]).astype(np.float32)
        out.append(np.asarray(sess.run(["logit"], {"image": x})[0], dtype=np.float32).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def check_parity(model, onnx_path: str | Path, pixels: Sequence[np.ndarray], *, size: int, mode: ResizeMode) -> float:  # noqa: ANN001
    """Largest absolute logit difference between torch (CPU, fp32) and onnxruntime on ``pixels``.

    Both go through ``resize_for_model``, so this checks the graph, not the preprocessing.
    """
    import torch

    model = model.to("cpu").float().eval()
    x = np.stack([resize_for_model(p, size, mode) for p in pixels]).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy().reshape(-1)
    got = onnx_logits(onnx_path, pixels, size=size, mode=mode)
    return float(np.abs(ref - got).max())


def write_sidecar(path: str | Path, *, size: int, mode: str, arch: str, seed: int, recipe: dict, trained_on: str, metrics: dict) -> Path:
    """Write the JSON that travels with the ONNX file (read by the ``onnx_classifier`` stage)."""
    path = Path(path)
    meta = {
        "input_size": size,
        "resize": mode,
        "pad_value": 0,
        "arch": arch,
        "input": "image: float32 [N,3,S,S] RGB in [0,1]; ImageNet mean/std inside the graph",
        "output": "logit: float32 [N] road-work log-odds (uncalibrated)",
        "seed": seed,
        "recipe": recipe,
        "trained_on": trained_on,
        "metrics": metrics,
    }
    path.write_text(json.dumps(json_safe(meta), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def json_safe(obj):  # noqa: ANN001, ANN201 - any JSON-like value
    """``obj`` with NaN / infinite floats replaced by None (strict JSON; e.g. recall of a source
    without positives is undefined, not a number)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
