"""CPU throughput of the shipped tier-1 ONNX classifier (images/s), with and without preprocessing.

Run: ``python benchmarks/classifier_speed.py [--threads 2] [--out benchmarks/results/classifier_speed.md]``.
Synthetic 640x360 frames are used (speed does not depend on content); preprocessing is
``resize_for_model`` exactly as at inference.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine  # noqa: E402

from workzone.io.images import resize_for_model  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "src" / "workzone" / "models"


def _bench(sess, x: np.ndarray, seconds: float) -> float:  # noqa: ANN001
    sess.run(["logit"], {"image": x})  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(["logit"], {"image": x})
        n += len(x)
    return n / (time.perf_counter() - t0)


def main(
    model: Path = MODELS / "roadwork_lite0.onnx",
    threads: int = 2,
    seconds: float = 5.0,
    out: Path | None = None,
) -> None:
    """Measure images/s at batch 1 and 8, and the preprocessing cost."""
    import onnxruntime as ort

    meta = json.loads(model.with_suffix(".json").read_text())
    size, mode = meta["input_size"], meta["resize"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (360, 640, 3), dtype=np.uint8) for _ in range(16)]
    t0 = time.perf_counter()
    for f in frames:
        resize_for_model(f, size, mode)
    pre_ms = (time.perf_counter() - t0) / len(frames) * 1000
    rows = []
    for batch in (1, 8):
        x = np.stack([resize_for_model(f, size, mode) for f in frames[:batch]])
        rows.append((batch, _bench(sess, x, seconds)))
    lines = [
        "# Tier-1 classifier CPU speed",
        "",
        f"Machine: {describe_machine()}.",
        f"Model: `{model.name}` ({model.stat().st_size / 1e6:.1f} MB, weights {meta.get('metrics', {}).get('weights', 'fp32')}, "
        f"input {size}x{size}, resize `{mode}`), "
        f"onnxruntime CPU, {threads} intra-op threads, {seconds:.0f} s per row.",
        "",
        "| batch | images/s (model only) | ms/image |",
        "| --- | --- | --- |",
        *[f"| {b} | {ips:.1f} | {1000 / ips:.1f} |" for b, ips in rows],
        "",
        f"Preprocessing (`resize_for_model`, 640x360 -> {size}, {mode}): {pre_ms:.2f} ms/image.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if out is not None:
        out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    typer.run(main)
