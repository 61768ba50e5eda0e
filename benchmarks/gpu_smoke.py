"""CUDA smoke test of the in-process transformers stages, through the real cascade.

Usage (on a machine with a GPU; the workzone package is pure Python, so no install is needed):
    PYTHONPATH=src:. python benchmarks/gpu_smoke.py [--device cuda] [--images 4] [--repeats 5] [--out DIR]

For each stage kind (vlm_transformers, hf_image_classification, hf_zero_shot_image,
hf_zero_shot_detection, hf_depth, hf_segmentation) it builds the same tiny random-initialised model as the CPU
tests (tests/stages/_tiny_hf.py, tests/stages/test_vlm_transformers.py), runs it as a one-tier
pipeline with ``Cascade.from_config(..., device=DEVICE)``, and checks that

* the model's parameters live on DEVICE (``pick_device`` silently falls back to the CPU, so a
  run that merely succeeds proves nothing),
* for ``hf_depth`` and ``hf_segmentation``, the model judged the detector's boxes (its note is there),
* no stage errored, every log-odds is finite (or an abstention) and every probability is finite,
* the scores agree with the same stage run on the CPU in float32 (max |delta log-odds| is
  reported; half precision on the GPU makes it small, not zero).

Latency is the median of ``--repeats`` timed cascade runs over ``--images`` images, after one
warm-up run. The tiny models say nothing about real-model speed: the numbers show the plumbing
cost (processor, host-device copies, post-processing) of each stage. Results go to
``OUT/gpu_smoke.md`` (OUT = $OUT, else ``--out``) and to stdout. Exits 1 if any stage failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from workzone.cascade import Cascade  # noqa: E402
from workzone.config.loader import parse_pipeline  # noqa: E402
from workzone.types import Image  # noqa: E402

PROMPTS = {"a traffic cone": "cone", "a worker": "worker", "a road work sign": "sign"}


def build_models(root: Path, notes: list[str]) -> dict[str, dict]:
    """Save every tiny model under ``root``; return stage kind -> inline stage params."""
    import transformers

    from tests.stages._tiny_hf import save_clip, save_depth_anything, save_owlv2, save_sam, save_vit_classifier
    from tests.stages.test_onnx_detector import _yolov8_onnx

    specs: dict[str, dict] = {}
    if not hasattr(transformers, "Qwen2VLImageProcessorPil"):
        # Older transformers 5.x name the PIL-backend image processor without the suffix.
        transformers.Qwen2VLImageProcessorPil = transformers.Qwen2VLImageProcessor
        notes.append("transformers has no Qwen2VLImageProcessorPil: the Qwen-VL builder used Qwen2VLImageProcessor")
    from tests.stages.test_vlm_transformers import build_tiny_qwen3_vl

    specs["vlm_transformers"] = {"model": str(build_tiny_qwen3_vl(root / "qwen3vl")), "batch_size": 8,
                                 "max_pixels": 96 * 96}
    specs["hf_image_classification"] = {
        "model": str(save_vit_classifier(root / "vit", ["other", "road_work", "construction_zone"])),
        "positive_labels": ["road_work", "construction_zone"]}
    specs["hf_zero_shot_image"] = {"model": str(save_clip(root / "clip")),
                                   "positive_prompts": ["a photo of road work", "a traffic cone"],
                                   "negative_prompts": ["an empty street"]}
    specs["hf_zero_shot_detection"] = {"model": str(save_owlv2(root / "owl")), "prompts": PROMPTS,
                                       "threshold": 0.5, "classes": {"max_boxes": 1000}}
    # The ONNX detector always finds two boxes, so the depth model runs on every image.
    _yolov8_onnx(root / "tiny.onnx")
    specs["hf_depth"] = {"model": str(save_depth_anything(root / "depth")), "min_box_px": 10,
                         "detector": {"kind": "onnx_detector", "model": str(root / "tiny.onnx"),
                                      "format": "yolov8", "conf": 0.3, "classes": {"prior": 0.1}}}
    # Any mask shape passes, so the score must match the CPU run up to half-precision mask edges.
    specs["hf_segmentation"] = {"model": str(save_sam(root / "sam")), "min_fill": 0.0, "min_box_px": 1,
                                "shapes": {"cone": {"fill": [0.0, 1.0]}, "worker": {"fill": [0.0, 1.0]}},
                                "detector": dict(specs["hf_depth"]["detector"])}
    return specs


@contextlib.contextmanager
def no_video_processor():
    """The CPU tests' workaround for a missing torchvision: leave the Qwen-VL video slot empty."""
    import transformers
    from transformers import processing_utils as pu

    class _None:
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return None

    class Mapping(type(pu.MODALITY_TO_AUTOPROCESSOR_MAPPING)):
        def __getitem__(self, key):
            return _None if key == "video_processor" else super().__getitem__(key)

    saved = pu.MODALITY_TO_AUTOPROCESSOR_MAPPING, getattr(transformers, "VideoProcessorMixin", None)
    pu.MODALITY_TO_AUTOPROCESSOR_MAPPING = Mapping()
    if saved[1] is None:
        pu.transformers_module.VideoProcessorMixin = type(None)
    try:
        yield
    finally:
        pu.MODALITY_TO_AUTOPROCESSOR_MAPPING = saved[0]
        if saved[1] is None:
            delattr(pu.transformers_module, "VideoProcessorMixin")


def images(n: int) -> list[Image]:
    rng = np.random.default_rng(0)
    shapes = [(64, 128), (96, 128), (120, 90), (70, 110), (48, 48), (130, 60)]
    return [Image(rng.integers(0, 256, (*shapes[i % len(shapes)], 3), dtype=np.uint8)) for i in range(n)]


def one_stage_cascade(kind: str, params: dict, device: str) -> Cascade:
    text = yaml.safe_dump({"name": f"smoke-{kind}", "tiers": [
        {"name": "only", "stages": [{"name": kind, "kind": kind, **params}]}]}, sort_keys=False)
    return Cascade.from_config(parse_pipeline(text, f"<smoke {kind}>"), device=device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


async def run_stage(kind: str, params: dict, device: str, batch: list[Image], repeats: int) -> dict:
    """Run one stage as a one-tier cascade; return its checks and timings (raises on a failed check)."""
    cascade = one_stage_cascade(kind, params, device)
    t0 = time.perf_counter()
    await cascade.start()
    load_s = time.perf_counter() - t0
    try:
        stage = cascade.stages[0]
        model = stage._model  # every transformers stage keeps its model here
        first = next(model.parameters())
        if first.device.type != device.split(":")[0]:
            raise AssertionError(f"{kind}: parameters on {first.device}, wanted {device}")
        decisions = await cascade.run(batch)  # warm-up (CUDA kernels, cuDNN autotuning)
        times, stage_ms = [], []
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            decisions = await cascade.run(batch)
            _sync(device)
            times.append((time.perf_counter() - t) * 1000)
            stage_ms.append(statistics.median(d.stages[0].latency_ms for d in decisions))
        log_odds = []
        for d in decisions:
            if d.errors:
                raise AssertionError(f"{kind}: stage error {d.errors}")
            rep = d.stages[0]
            if rep.log_odds is not None and not math.isfinite(rep.log_odds):
                raise AssertionError(f"{kind}: non-finite log-odds {rep.log_odds}")
            if not math.isfinite(d.probability):
                raise AssertionError(f"{kind}: non-finite probability {d.probability}")
            log_odds.append(rep.log_odds)
        evidence = sum(len(d.stages[0].evidence.boxes) for d in decisions)
        notes = " | ".join(decisions[0].stages[0].evidence.notes)
        if kind == "hf_depth" and "kept" not in notes:
            raise AssertionError(f"{kind}: the depth model did not judge any box: {notes}")
        if kind == "hf_segmentation" and "segmentation: confirmed 2" not in notes:
            raise AssertionError(f"{kind}: the segmentation model did not confirm the detector's two boxes: {notes}")
        return {"device": str(first.device), "dtype": str(first.dtype).removeprefix("torch."),
                "params": sum(p.numel() for p in model.parameters()), "load_s": load_s,
                "batch_ms": statistics.median(times), "stage_ms": statistics.median(stage_ms),
                "log_odds": log_odds, "boxes": evidence, "notes": notes}
    finally:
        await cascade.aclose()


def run_kind(kind: str, params: dict, device: str, batch: list[Image], repeats: int, notes: list[str]) -> dict:
    if kind != "vlm_transformers":
        return asyncio.run(run_stage(kind, params, device, batch, repeats))
    try:
        res = asyncio.run(run_stage(kind, params, device, batch, repeats))
        res["video_stub"] = False
        return res
    except Exception as exc:  # noqa: BLE001 - retried with the CPU tests' workaround, reported below
        notes.append(f"vlm_transformers without the video-processor stub failed ({type(exc).__name__}: "
                     f"{str(exc)[:300]}); retried with the stub")
    with no_video_processor():
        res = asyncio.run(run_stage(kind, params, device, batch, repeats))
    res["video_stub"] = True
    return res


def describe(device: str) -> str:
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    tv = "absent"
    with contextlib.suppress(ImportError):
        import torchvision

        tv = torchvision.__version__
    cuda = torch.version.cuda or "none"
    return (f"{gpu}; Python {platform.python_version()}, torch {torch.__version__} (CUDA {cuda}), "
            f"torchvision {tv}, transformers {transformers.__version__}; device={device}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu_smoke"))
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available here", file=sys.stderr)
        return 2
    batch = images(args.images)
    notes: list[str] = []
    rows: list[str] = []
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        specs = build_models(Path(tmp), notes)
        for kind, params in specs.items():
            try:
                res = run_kind(kind, params, args.device, batch, args.repeats, notes)
                ref = run_kind(kind, params, "cpu", batch, 1, []) if args.device != "cpu" else res
                deltas = [abs(a - b) for a, b in zip(res["log_odds"], ref["log_odds"])
                          if a is not None and b is not None]
                delta = f"{max(deltas):.2g}" if deltas else "n/a"
                lo = ", ".join("abstain" if x is None else f"{x:+.3f}" for x in res["log_odds"])
                rows.append(f"| {kind} | ok{' (video stub)' if res.get('video_stub') else ''} | {res['device']} | "
                            f"{res['dtype']} | {res['params']:,} | {res['load_s']:.2f} | {res['batch_ms']:.1f} | "
                            f"{res['stage_ms']:.1f} | {lo} | {delta} | {res['boxes']} |")
            except Exception as exc:  # noqa: BLE001 - one failed stage must not hide the others
                failed += 1
                traceback.print_exc()
                rows.append(f"| {kind} | FAIL: {type(exc).__name__}: {str(exc)[:200]} | | | | | | | | | |")
    n = len(batch)
    md = "\n".join([
        "# GPU smoke test of the transformers stages",
        "",
        f"Machine: {describe(args.device)}.",
        f"Each stage runs as a one-tier cascade (`Cascade.from_config(..., device={args.device!r})`) over {n} "
        f"random images of mixed sizes; latency is the median of {args.repeats} timed runs after one warm-up. "
        "Models are tiny and random-initialised (the CPU tests' builders): the timings are plumbing cost, not "
        "real-model speed. Stage ms / img is the cascade's per-image share of the stage call; the delta is "
        "the largest log-odds difference from the same stage run on the CPU in float32.",
        "",
        f"| stage kind | result | param device | dtype | params | load+warmup s | cascade ms / {n} img | "
        f"stage ms / img | log-odds | max abs delta vs CPU | boxes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        *(f"- {note}" for note in notes),
        "",
    ])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_smoke.md").write_text(md)
    print(md)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
