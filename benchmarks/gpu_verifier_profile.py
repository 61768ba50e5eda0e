"""The candidate verifier on the torch device, step by step, and what its precision does to the decision (issue 23).

Usage (on the GPU machine; `--device cpu` runs the same code here, slowly):
    python benchmarks/gpu_verifier_profile.py --device cuda --data .gpu/roadwork-v1 --out gpu_verifier_profile.md

1. Precision: the dev images (decoded by Pillow, as the CPU path does) through default-gpu's detector on the device;
   every candidate's crop cut on the device (Pillow's pixels exactly); the verifier graph run at fp16, at fp32 (cuDNN
   may use TF32, torch's default) and at strict fp32 (TF32 off), each against onnxruntime's fp32 on the CPU over the
   same crops: the largest difference in P(work-zone object), and the share of images whose verified decision
   (the sidecar's, as a probability) stays within 0.02.
3. (listed last, run last) Parity of default-gpu as a whole, the verifier at fp16 and at fp32, with the JPEGs
   decoded by libjpeg on CPU threads and by nvJPEG, against onnxruntime on the CPU (the CUDA test's measure).
2. Time: batches of 1,024 synthesised JPEGs (224 and 640 px) decoded by nvJPEG, 8 candidates each; the stage's
   steps, each synchronised: the host's candidate lists, the crops, the network (fp16, fp32), the probabilities to
   the host, the verified decisions and evidence, and the whole ``_predict_evidence_sync``; min of 5 after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from _report import publish
from workzone.accel.crops import crop_windows, crops_like_pillow
from workzone.accel.device_image import DeviceImage, image_tensor
from workzone.stages.base import StageContext
from workzone.stages.object_verifier import ObjectVerifierParams, ObjectVerifierStage
from workzone.throughput.machine import describe_machine
from workzone.types import Box, Evidence, StageReport
from workzone.verified_evidence import object_probability, verified_features


def _sync(torch: Any, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(torch: Any, device: str, fn: Callable[[], Any], repeats: int = 5) -> float:
    fn()
    _sync(torch, device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(torch, device)
        best = min(best, time.perf_counter() - t)
    return best * 1000.0


def _stage(device: str, precision: str) -> ObjectVerifierStage:
    stage = ObjectVerifierStage("verify", ObjectVerifierParams(backend="torch", precision=precision, max_batch=4096),
                                context=StageContext(device=device))
    asyncio.run(stage.load())
    return stage


def precision_rows(torch: Any, device: str, data: Path, limit: int | None) -> list[str]:
    import onnxruntime as ort

    from workzone.config.backend import with_backend
    from workzone.config.loader import load_pipeline_config
    from workzone.api import Pipeline
    from workzone.io.images import decode_image
    from workzone.throughput.parity import dev_jpegs

    items = dev_jpegs(data, limit=limit)
    cfg, path = load_pipeline_config("default-gpu")
    cfg = with_backend(cfg, "torch")
    imgs = [decode_image(b, source=s) for s, b in items]
    dev_imgs = [DeviceImage(image_tensor(im, device), im.source) for im in imgs]
    with Pipeline(cfg, path.parent, device=device) as pipe:
        decisions = [d for i in range(0, len(dev_imgs), 64) for d in pipe.run_decoded(dev_imgs[i:i + 64], run_all=True)]
        verifier = next(s for s in pipe.cascade.stages if s.name == "verify")
        cands = [verifier._candidates(d.stages) or [] for d in decisions]
        floor_boxes = [[(b.x1, b.y1, b.x2, b.y2) for b in c] for c in cands]
        owner = np.repeat(np.arange(len(imgs)), [len(c) for c in cands])
        xyxy = np.array([b for bs in floor_boxes for b in bs], np.float64).reshape(-1, 4)
        tensors = [image_tensor(im, device) for im in dev_imgs]
        h = np.array([t.shape[1] for t in tensors])[owner]
        w = np.array([t.shape[2] for t in tensors])[owner]
        win = crop_windows(xyxy, h, w, context=verifier._context, max_side=verifier._max_side)
        crops = crops_like_pillow(tensors, owner, win, verifier._size).div_(255.0)
        classes, decision = verifier._classes, verifier._decision
    model = str(StageContext().resolve("builtin:roadwork_verifier.onnx"))
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"crops": crops.cpu().numpy()})[0]

    def z_of(probs: np.ndarray) -> np.ndarray:
        out, k = [], 0
        for c in cands:
            n = len(c)
            f = verified_features(np.array([b.score for b in c]), [b.label for b in c], probs[k:k + n], classes)
            out.append(decision.log_odds(f))
            k += n
        return 1.0 / (1.0 + np.exp(-np.array(out)))

    p_ref, obj_ref = z_of(ref.astype(np.float64)), object_probability(ref.astype(np.float64), classes)
    rows = [f"{len(imgs)} dev images, {len(crops)} candidates (score >= {verifier._floor}, best {verifier._most})", "",
            "| verifier on the device | max abs d P(object) per candidate | images within 0.02 (verified decision) "
            "| max abs dp (decision) | decisions differ |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, precision, tf32 in (("fp16", "float16", True), ("fp32 (TF32 convolutions, torch's default)", "float32", True),
                                  ("fp32, TF32 off", "float32", False)):
        stage = _stage(device, precision)
        runner = stage._torch_runner()
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32):
            got = runner(crops)[runner.output_names[0]].double().cpu().numpy()
        asyncio.run(stage.aclose())
        p = z_of(got)
        d_obj = np.abs(object_probability(got, classes) - obj_ref)
        rows.append(f"| {name} | {d_obj.max():.4f} | {(np.abs(p - p_ref) <= 0.02).mean():.1%} | "
                    f"{np.abs(p - p_ref).max():.4f} | {int(((p > 0.5) != (p_ref > 0.5)).sum())} |")
    return rows


def timing_rows(torch: Any, device: str, size: int, batch: int, precision: str) -> list[str]:
    from workzone.accel.decode import DeviceDecoder
    from workzone.throughput.inputs import sample_images, synth_jpegs

    blobs = synth_jpegs(batch, (size, size), sources=sample_images("samples"))
    decoder = DeviceDecoder(device) if device.startswith("cuda") else None
    if decoder is not None:
        imgs = decoder.decode(blobs, [f"synth-{i}" for i in range(batch)])
    else:
        from workzone.io.images import decode_image

        imgs = [decode_image(b) for b in blobs]
    rng = np.random.default_rng(0)
    evidence = []
    for _ in imgs:  # 8 candidates of 8-80 px, anywhere
        side = rng.uniform(8, min(80, size / 2), 8)
        x, y = rng.uniform(0, size - side), rng.uniform(0, size - side)
        boxes = tuple(Box("cone", float(0.9 - 0.1 * k), float(x[k]), float(y[k]), float(x[k] + side[k]),
                          float(y[k] + side[k] * 1.5)) for k in range(8))
        evidence.append((StageReport("objects", "roadwork_detector", 0, 0.0, Evidence(boxes=boxes), 0.0),))
    stage = _stage(device, precision)
    model = stage._model
    cands = [stage._candidates(e) for e in evidence]
    xyxy = [np.array([(b.x1, b.y1, b.x2, b.y2) for b in c], np.float64) for c in cands]
    tensors = [image_tensor(im, device) for im in imgs]
    owner = np.repeat(np.arange(batch), 8)
    allxy = np.concatenate(xyxy)
    hs, ws = np.array([t.shape[1] for t in tensors])[owner], np.array([t.shape[2] for t in tensors])[owner]
    win = crop_windows(allxy, hs, ws, context=model.context, max_side=model.max_side)
    crops = crops_like_pillow(tensors, owner, win, model.size).div_(255.0)
    probs = model.runner(crops)[model.runner.output_names[0]].double().cpu().numpy()
    steps = [
        ("candidate lists (host)", lambda: [stage._candidates(e) for e in evidence]),
        ("windows (host)", lambda: crop_windows(allxy, hs, ws, context=model.context, max_side=model.max_side)),
        ("crops on the device", lambda: crops_like_pillow(tensors, owner, win, model.size)),
        (f"verifier network ({precision})", lambda: model.runner(crops)),
        ("probabilities to the host", lambda: model.runner(crops)[model.runner.output_names[0]].double().cpu().numpy()),
        ("verified decisions + evidence (host)", lambda: stage._verify(cands, probs)),
        ("whole stage (_predict_evidence_sync)", lambda: stage._predict_evidence_sync(imgs, evidence)),
    ]
    rows = []
    for name, fn in steps:
        ms = _timed(torch, device, fn)
        rows.append(f"| {size} | {batch} | {name} | {ms:.2f} | {batch / ms * 1000:,.0f} |")
    asyncio.run(stage.aclose())
    if decoder is not None:
        decoder.close()
    return rows


def parity_rows(device: str, data: Path, limit: int | None) -> list[str]:
    from workzone.accel.decode import DeviceDecoder
    from workzone.config.backend import with_backend, with_stage_params
    from workzone.config.loader import load_pipeline_config
    from workzone.throughput.parity import compare, dev_jpegs, pipeline_probabilities

    items = dev_jpegs(data, limit=limit)
    cfg, path = load_pipeline_config("default-gpu")
    ref = pipeline_probabilities(with_backend(cfg, "onnxruntime"), path.parent, items, batch=64)
    rows = ["| verifier precision | decode | parity (images within 0.02, max abs dp, decisions differ) |",
            "| --- | --- | --- |"]
    for precision in ("float16", "float32"):
        fast = with_stage_params(with_backend(cfg, "torch"), {"verify": {"precision": precision}})
        for share, name in ((1.0, "libjpeg on CPU threads"), (0.0, "nvJPEG")):
            decoder = DeviceDecoder(device, cpu_share=share, workers=16) if device.startswith("cuda") else None
            try:
                got = pipeline_probabilities(fast, path.parent, items, batch=256, device=device,
                                             decode=None if decoder is None else decoder.decode)
            finally:
                if decoder is not None:
                    decoder.close()
            rows.append(f"| {precision} | {name} | {compare(ref, got, device=device).describe().replace(chr(124), chr(92) + chr(124))} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/roadwork-v1"))
    ap.add_argument("--limit", type=int, default=None, help="dev images for the precision rows (default: all)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--size", type=int, action="append", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch

    machine = describe_machine(args.device)
    lines = ["# The candidate verifier on the torch device (issue 23)", "",
             "- Command: `python3 " + " ".join(["benchmarks/gpu_verifier_profile.py", *sys.argv[1:]]) + "`",
             f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "", "## 1. Precision", ""]
    lines += precision_rows(torch, args.device, args.data, args.limit)
    lines += ["", "## 2. Where a batch's time goes (each step synchronised, min of 5 after a warm-up)", "",
              "| input px | batch | step | ms | images/s |", "| ---: | ---: | --- | ---: | ---: |"]
    for size in args.size or [224, 640]:
        for precision in ("float16", "float32"):
            rows = timing_rows(torch, args.device, size, args.batch, precision)
            lines += rows if precision == "float16" else [r for r in rows if "network" in r or "whole" in r]
    lines += ["", "## 3. default-gpu against onnxruntime on the dev images, by verifier precision", ""]
    lines += parity_rows(args.device, args.data, args.limit)
    publish(lines, args.out)


if __name__ == "__main__":
    main()
