"""An ONNX classifier in fp16: file size, logit drift, dev MCC and CPU speed against fp32.

Usage:
    python benchmarks/fp16_classifier.py [--model src/workzone/models/roadwork_lite0.onnx]
        [--manifest ../shared/data/roadwork-v1/manifest.csv] [--split dev] [--limit N]
        [--out-dir DIR] [--iters 300] [--threads 0] [--out benchmarks/results/fp16_classifier.md]

Two fp16 files are written to ``--out-dir`` (a temporary folder by default); the input model is
never modified:

- ``fp16``: ``onnxconverter_common.float16.convert_float_to_float16(model, keep_io_types=True)``,
  so the graph is fp16 and its ``image`` input and ``logit`` output stay fp32 (the stage contract is
  unchanged). Whether it computes in fp16 is the provider's choice: one without an fp16 kernel for an
  op casts around it.
- ``fp16-weights``: only the float initializers are stored as fp16, each followed by a Cast to
  fp32, so the file is as small but the arithmetic stays fp32 (onnxruntime folds the Casts when
  the session is built). This is the fallback when fp16 arithmetic is slow or inexact on a CPU.

Accuracy: every image of the split is decoded with ``workzone.io.images.decode_image`` and
prepared with ``resize_for_model(pixels, size, mode)`` from the model's JSON sidecar, as the
``onnx_classifier`` stage does; MCC is at logit 0. Speed: onnxruntime CPU, real dev inputs, the
variants interleaved call by call (so load from other jobs on shared cores hits all of them
alike), after a warm-up; images/s = batch / median seconds per call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine  # noqa: E402

from workzone.evaluation.metrics import matthews_corrcoef  # noqa: E402
from workzone.io.images import decode_image, resize_for_model  # noqa: E402
from workzone_train.data import load_samples  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Initializers smaller than this stay fp32 in ``fp16-weights``: they are shapes, axes and scalars
# whose bytes do not matter and whose exact values might.
_MIN_WEIGHT_ELEMENTS = 16


def convert_fp16(model_path: Path, out: Path) -> Path:
    """Full fp16 graph with fp32 input and output, via onnxconverter-common."""
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def convert_fp16_weights(model_path: Path, out: Path) -> Path:
    """fp16 storage of the float weights only; a Cast back to fp32 feeds each original consumer."""
    from workzone_train.export import store_weights_fp16

    return store_weights_fp16(model_path, out, min_elements=_MIN_WEIGHT_ELEMENTS)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _logits(session, x: np.ndarray, batch: int = 16) -> np.ndarray:
    out = [np.asarray(session.run(None, {"image": x[i:i + batch]})[0], np.float64).reshape(-1)
           for i in range(0, len(x), batch)]
    return np.concatenate(out)


def _speed(sessions: dict, x: np.ndarray, batch: int, iters: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median / p10 / p90 images per second of each session at ``batch``, calls interleaved."""
    xb = np.ascontiguousarray(x[:batch])
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for k in range(warmup + iters):
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"image": xb})
            if k >= warmup:
                times[name].append(time.perf_counter() - t)
    out = {}
    for name, ts in times.items():
        ips = batch / np.array(ts)
        out[name] = {"median": batch / float(np.median(ts)), "p10": float(np.percentile(ips, 10)),
                     "p90": float(np.percentile(ips, 90)), "ms": 1000 * float(np.median(ts))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "src/workzone/models/roadwork_lite0.onnx"))
    ap.add_argument("--manifest", default=str(REPO.parent / "shared/data/roadwork-v1/manifest.csv"))
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=0, help="N images spread evenly over the split (0 = all)")
    ap.add_argument("--out-dir", default="", help="where the fp16 files go (default: a temporary folder)")
    ap.add_argument("--iters", type=int, default=300, help="timed calls per variant and batch size")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = all cores)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/fp16_classifier.md"))
    args = ap.parse_args()

    import onnxruntime as ort

    model = Path(args.model).resolve()
    sidecar = model.with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    size, mode = int(meta.get("input_size", 224)), meta.get("resize", "squash")
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="fp16_classifier_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": model,
             "fp16": convert_fp16(model, out_dir / f"{model.stem}_fp16.onnx"),
             "fp16-weights": convert_fp16_weights(model, out_dir / f"{model.stem}_fp16w.onnx")}
    print(f"fp16 files in {out_dir}", flush=True)

    samples = load_samples(args.manifest, splits=[args.split])
    if args.limit and args.limit < len(samples):
        # Evenly spaced rather than the first N: the manifest is grouped by source and label.
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, args.limit).round().astype(int)]
    y = np.array([s.label for s in samples], int)
    x = np.stack([resize_for_model(decode_image(s.path).pixels, size, mode) for s in samples]).astype(np.float32)
    sessions = {n: _session(p, args.threads) for n, p in paths.items()}
    logits = {n: _logits(s, x) for n, s in sessions.items()}
    print("accuracy done; timing...", flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    speed = {b: _speed(sessions, x, b, args.iters, args.warmup) for b in batches}

    def rel(p: Path) -> str:
        return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)

    cmd = "python benchmarks/fp16_classifier.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("model", rel(model)), ("split", args.split), ("limit", args.limit),
                                                     ("iters", args.iters), ("threads", args.threads))
        if not (k == "limit" and not v)) + (f" --out-dir {args.out_dir}" if args.out_dir else "")
    mcc32 = matthews_corrcoef(y.tolist(), (logits["fp32"] > 0).astype(int).tolist())
    lines = [
        f"# fp16 `{model.name}`: size, accuracy, CPU speed", "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {describe_machine()}",
        f"- onnxruntime {ort.__version__} (CPUExecutionProvider, intra-op threads {args.threads or 'all'}), "
        f"onnx {__import__('onnx').__version__}, onnxconverter-common {__import__('onnxconverter_common').__version__}",
        f"- command: `{cmd}`",
        f"- data: split `{args.split}` of `{Path(args.manifest).parent.name}`, {len(y)} images ({int(y.sum())} road work), "
        f"decode_image + resize_for_model(pixels, {size}, {mode!r}) as the stage does; MCC at logit 0",
        f"- speed: real inputs, variants interleaved call by call, {args.warmup} warm-up + {args.iters} timed calls each; "
        "images/s = batch / median call time (p10-p90 of per-call images/s in brackets); the cores are shared with "
        "other jobs, so compare variants within a row",
        "- variants: `fp16` = `convert_float_to_float16(keep_io_types=True)` (an fp16 graph; the provider decides "
        "the arithmetic); `fp16-weights` = fp16 "
        "initializers + Cast to fp32 (fp32 arithmetic, Casts folded at session build)",
        "",
        "| variant | file MB | max abs dlogit | mean abs dlogit | MCC | decisions flipped vs fp32 | "
        + " | ".join(f"img/s batch {b}" for b in batches) + " |",
        "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in batches) + " |",
    ]
    for n, p in paths.items():
        d = np.abs(logits[n] - logits["fp32"])
        mcc = matthews_corrcoef(y.tolist(), (logits[n] > 0).astype(int).tolist())
        flipped = int(((logits[n] > 0) != (logits["fp32"] > 0)).sum())
        sp = " | ".join(f"{speed[b][n]['median']:.1f} ({speed[b][n]['p10']:.1f}-{speed[b][n]['p90']:.1f})" for b in batches)
        lines.append(f"| {n} | {p.stat().st_size / 1e6:.2f} | {d.max():.2e} | {d.mean():.2e} | {mcc:.4f} | {flipped} | {sp} |")
    lines += ["", f"fp32 MCC {mcc32:.4f}. Median ms per call: " + "; ".join(
        f"batch {b}: " + ", ".join(f"{n} {speed[b][n]['ms']:.1f}" for n in paths) for b in batches) + "."]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
