"""ONNX export of the classifier, the parity check, and evaluation through onnxruntime.

Contract (what the cascade's ``onnx_classifier`` stage relies on): input ``image`` float32
[N, 3, S, S] RGB in [0, 1] (ImageNet normalisation inside the graph), output ``logit`` float32
[N], dynamic N. Pixels reach the graph only through :func:`workzone.io.images.resize_for_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from workzone.io.atomic import atomic_write_text
from workzone.io.images import ResizeMode, resize_for_model

__all__ = ["export_onnx", "onnx_logits", "check_parity", "write_sidecar", "json_safe", "store_weights_fp16",
           "export_and_score", "save_state", "load_state"]


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
    atomic_write_text(path, json.dumps(json_safe(meta), indent=2, allow_nan=False) + "\n")
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


def store_weights_fp16(model_path: str | Path, out: str | Path, *, min_elements: int = 16) -> Path:
    """Rewrite an ONNX model with its float weights stored as fp16, each cast back to fp32.

    Why this form and not a full fp16 graph: onnxruntime's CPU provider has no fp16 convolution
    on common CPUs, so a full fp16 graph computes in fp32 anyway (measured in
    ``benchmarks/results/fp16_classifier.md``: same speed, same drift); storing only the weights
    halves the file, keeps every node fp32 on every provider and needs only ``onnx``.

    Args:
        model_path: the fp32 model.
        out: where to write (may be ``model_path``).
        min_elements: smaller initializers (shapes, scalars) stay fp32.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    casts, kept = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or init.name in graph_inputs or int(np.prod(init.dims)) < min_elements:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return Path(out)


def save_state(model: Any, path: Path, *, half: bool = False) -> None:
    """Save ``model``'s state dict on the CPU (``half``: as float16, half the file)."""
    import torch

    torch.save({k: (v.cpu().half() if half else v.cpu()) for k, v in model.state_dict().items()}, path)


def load_state(model: Any, path: Path) -> None:
    """Load a state dict saved by :func:`save_state` (fp16 or fp32) into ``model`` as float32."""
    import torch

    model.load_state_dict({k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()})


def export_and_score(model, manifest: Path, out: Path, rec, seed: int, log: Callable[[str], Any], *,  # noqa: ANN001
                     fp16: bool = False, name: str = "roadwork_lite0") -> None:
    """Export ``model`` to ``out/<name>.onnx``, check parity, score ``manifest``'s dev split through
    onnxruntime and write ``dev_eval.json`` and the sidecar (``fp16``: weights stored as fp16)."""
    from workzone_train.data import load_pixels, load_samples
    from workzone_train.loso import evaluate_samples, train_splits

    onnx_path = export_onnx(model, out / f"{name}.onnx", size=rec.size)
    dev = load_samples(manifest, splits=("dev",))
    pixels = [load_pixels(s.path) for s in dev]
    parity = check_parity(model, onnx_path, pixels[:16], size=rec.size, mode=rec.resize)
    logits = onnx_logits(onnx_path, pixels, size=rec.size, mode=rec.resize)
    metrics: dict = {"parity_max_abs_logit_diff": parity, "weights": "fp32"}
    if fp16:
        # Parity is checked on the fp32 graph; the fp16 weights' drift is measured on all of dev.
        store_weights_fp16(onnx_path, onnx_path)
        half = onnx_logits(onnx_path, pixels, size=rec.size, mode=rec.resize)
        metrics.update(weights="fp16 (cast to fp32 at load)", fp16_max_abs_logit_diff=float(np.abs(half - logits).max()),
                       fp16_decisions_changed=int(((half > 0) != (logits > 0)).sum()))
        logits = half
    ev = evaluate_samples(dev, logits, pixels)
    atomic_write_text(out / "dev_eval.json", json.dumps(json_safe(ev), indent=2) + "\n")
    metrics.update({"dev_onnx": ev["overall"], "dev_per_source": ev["per_source"], "dev_light": ev["light"]})
    write_sidecar(out / f"{name}.json", size=rec.size, mode=rec.resize, arch=rec.arch, seed=seed,
                  recipe=rec.to_dict(), trained_on="roadwork-v1 splits " + "+".join(train_splits(rec)), metrics=metrics)
    log(f"dev MCC (onnxruntime) {ev['overall']['mcc']:.3f}; parity max |diff| {parity:.2e}")
    for src, m in ev["per_source"].items():
        log(f"  {src:18s} n={m['n']:4d} MCC {m['mcc']:.3f} recall {m['recall']:.3f} spec {m['specificity']:.3f}")
