"""The measurements behind ``workzone bench``; each returns one :class:`Row`.

Every run starts from JPEG bytes held in memory, so decoding is always inside the timed region
(except :func:`model_only`, which times the network alone). A run repeats its batches until
``seconds`` have passed, after one untimed warm-up batch (which also pays for ``torch.compile``).
On CUDA, device work is synchronised before each clock read.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from workzone.io.images import decode_image

__all__ = ["Row", "decode_cpu", "decode_device", "model_only", "tier1_from_bytes", "cascade_from_bytes",
           "onnx_classifier_from_bytes"]


@dataclass
class Row:
    """One measurement: throughput, per-batch latency, and per-stage latency where it applies."""

    name: str
    device: str
    size: str
    batch: int
    images: int
    seconds: float
    batch_ms_p50: float
    batch_ms_p95: float
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: str = ""
    cpu_s: float = 0.0  # CPU time this process used over the run (all threads)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def images_per_cpu_s(self) -> float:
        """Images per second of this process's CPU time: on a shared, busy machine the wall-clock rate
        drops with the load, this much less (on an idle machine, wall rate ~= this x cores in use)."""
        return self.images / self.cpu_s if self.cpu_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images_per_s"] = round(self.images_per_s, 1)
        d["images_per_cpu_s"] = round(self.images_per_cpu_s, 1)
        return d


def _repeat(step: Callable[[list[bytes]], Any], batches: Sequence[list[bytes]], seconds: float,
            sync: Callable[[], None] = lambda: None) -> tuple[int, float, list[float], float]:
    """Run ``step`` over ``batches`` in turn until ``seconds`` pass; returns (images, elapsed s, batch ms, CPU s)."""
    step(batches[0])
    sync()
    n, times, k = 0, [], 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    while True:
        b = batches[k % len(batches)]
        t = time.perf_counter()
        step(b)
        sync()
        times.append((time.perf_counter() - t) * 1000.0)
        n += len(b)
        k += 1
        if time.perf_counter() - t0 >= seconds and k >= len(batches):
            break
    return n, time.perf_counter() - t0, times, time.process_time() - c0


def _row(name: str, device: str, size: str, batch: int, res: tuple[int, float, list[float], float], **kw: Any) -> Row:
    n, sec, times, cpu = res
    return Row(name, device, size, batch, n, sec, float(np.percentile(times, 50)), float(np.percentile(times, 95)),
               cpu_s=cpu, **kw)


def _batches(blobs: list[bytes], batch: int) -> list[list[bytes]]:
    return [blobs[i:i + batch] for i in range(0, len(blobs) - batch + 1, batch)] or [blobs]


def decode_cpu(blobs: list[bytes], size: str, *, batch: int, seconds: float) -> Row:
    """Pillow decode on one thread (the CPU path's decoder, every guard on)."""
    res = _repeat(lambda b: [decode_image(x) for x in b], _batches(blobs, batch), seconds)
    return _row("decode (Pillow, 1 thread)", "cpu", size, batch, res)


def decode_device(blobs: list[bytes], size: str, *, device: str, batch: int, seconds: float,
                  cpu_share: float = 0.0, workers: int = 8) -> Row:
    """Batched decode into device memory (nvJPEG on CUDA; ``cpu_share`` of the JPEGs on CPU threads)."""
    import torch

    from workzone.accel.decode import DeviceDecoder

    dec = DeviceDecoder(device, cpu_share=cpu_share, workers=workers)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    try:
        res = _repeat(dec.decode, _batches(blobs, batch), seconds, sync)
    finally:
        dec.close()
    how = f"nvJPEG batched, {cpu_share:.0%} of JPEGs on {workers} CPU threads" if cpu_share else "nvJPEG batched"
    return _row("decode to device", device, size, batch, res, notes=how if device.startswith("cuda") else "Pillow")


def model_only(model: str, *, device: str, batch: int, seconds: float, compile: bool, input_size: int = 224) -> Row:
    """The classifier network alone on a ready batch on the device (no decode, no resize)."""
    import torch

    from workzone.accel.runner import TorchModelRunner

    runner = TorchModelRunner(model, device=device, compile=compile, max_batch=batch)
    x = torch.rand(batch, 3, input_size, input_size, device=runner.device).to(runner.dtype)
    sync = torch.cuda.synchronize if runner.device.startswith("cuda") else (lambda: None)
    res = _repeat(lambda _b: runner(x), [[b""] * batch], seconds, sync)
    return _row("classifier network only", runner.device, f"{input_size} px tensor", batch, res,
                notes="; ".join(runner.notes))


def tier1_from_bytes(blobs: list[bytes], size: str, model: str, *, device: str, batch: int, seconds: float,
                     compile: bool, cpu_share: float = 0.0, workers: int = 8) -> Row:
    """Tier 1 from bytes to probabilities: decode, resize, classifier, sigmoid, copy back to the host.

    Decoding runs in a producer thread one batch ahead of the network (the two overlap: the
    decoders and the kernels release the GIL), and probabilities come back through pinned memory.
    """
    import torch

    from workzone.accel.decode import DeviceDecoder, resize_batch
    from workzone.accel.runner import TorchModelRunner
    from workzone.stages._onnx import read_sidecar

    runner = TorchModelRunner(model, device=device, compile=compile, max_batch=batch)
    meta = read_sidecar(__import__("pathlib").Path(model))
    side, mode = int(meta.get("input_size", 224)), meta.get("resize", "squash")
    dec = DeviceDecoder(runner.device, cpu_share=cpu_share, workers=workers)
    cuda = runner.device.startswith("cuda")
    stage_ms: dict[str, list[float]] = defaultdict(list)

    def probabilities(imgs: list) -> tuple[Any, Any]:
        t = time.perf_counter()
        x = resize_batch(imgs, side, mode, device=runner.device, dtype=runner.dtype)
        p = torch.sigmoid(runner(x)[runner.output_names[0]].reshape(-1))
        host = torch.empty(p.shape, dtype=p.dtype, pin_memory=cuda)
        host.copy_(p, non_blocking=True)
        ready = torch.cuda.Event() if cuda else None
        if ready is not None:
            ready.record()
        stage_ms["resize + classifier (launch)"].append((time.perf_counter() - t) * 1000.0)
        return host, ready

    batches = _batches(blobs, batch)
    probabilities(dec.decode(batches[0]))  # warm-up (compiles)
    if cuda:
        torch.cuda.synchronize()
    todo: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce() -> None:
        k = 0
        while not stop.is_set():
            t = time.perf_counter()
            imgs = dec.decode(batches[k % len(batches)])
            stage_ms["decode"].append((time.perf_counter() - t) * 1000.0)
            todo.put(imgs)
            k += 1
        todo.put(None)

    worker = threading.Thread(target=produce, daemon=True)
    n, times, done = 0, [], 0
    t0 = time.perf_counter()
    worker.start()
    pending: Any = None
    while True:
        t = time.perf_counter()
        imgs = todo.get()
        out = probabilities(imgs)
        if pending is not None:
            # Wait for the previous batch only: the one just launched keeps the GPU busy meanwhile.
            host, ready = pending
            if ready is not None:
                ready.synchronize()
            assert np.isfinite(host.numpy()).all()
        pending = out
        n += len(imgs)
        done += 1
        times.append((time.perf_counter() - t) * 1000.0)
        if time.perf_counter() - t0 >= seconds and done >= 3:
            break
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    stop.set()
    while todo.get() is not None:
        pass
    dec.close()
    stages = {k: {"p50_ms_per_batch": float(np.percentile(v, 50))} for k, v in stage_ms.items()}
    return Row("tier 1 from JPEG bytes", runner.device, size, batch, n, elapsed, float(np.percentile(times, 50)),
               float(np.percentile(times, 95)), stages=stages,
               notes="; ".join(runner.notes + [f"decode: nvJPEG, {cpu_share:.0%} on CPU threads" if cuda else "decode: Pillow"]))


def onnx_classifier_from_bytes(blobs: list[bytes], size: str, model: str, *, batch: int, seconds: float) -> Row:
    """The plain onnxruntime classifier (CPU) from bytes: Pillow decode + the ``onnx_classifier`` stage."""
    from workzone.stages.base import StageContext
    from workzone.stages.onnx_classifier import OnnxClassifierParams, OnnxClassifierStage

    stage = OnnxClassifierStage("classifier", OnnxClassifierParams(model=model, backend="onnxruntime"), StageContext())
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(stage.load())
        res = _repeat(lambda b: loop.run_until_complete(stage.predict([decode_image(x) for x in b])),
                      _batches(blobs, batch), seconds)
    finally:
        loop.close()
    return _row("onnxruntime classifier from JPEG bytes", "cpu", size, batch, res)


def cascade_from_bytes(blobs: list[bytes], size: str, pipeline: str, *, device: str, batch: int, seconds: float,
                       compile: bool = False, run_all: bool = False, cpu_share: float = 0.0, workers: int = 8) -> Row:
    """A whole pipeline from bytes: decode (on the device when it is CUDA), every tier, early exits.

    With ``run_all`` no image exits early: every tier runs on every image (the worst case, and the
    way to time tier 2 when the synthesised inputs are too easy to leave tier 1 undecided).

    Per-stage latency is the stage's wall time per batch divided by the images it ran on (the
    cascade's ``latency_ms``), averaged over the images that reached the stage.
    """
    from workzone.config.backend import with_backend
    from workzone.api import Pipeline
    from workzone.config.loader import load_pipeline_config

    decoder = None
    if device.startswith("cuda"):
        from workzone.accel.decode import DeviceDecoder

        decoder = DeviceDecoder(device, cpu_share=cpu_share, workers=workers)
    cfg, path = load_pipeline_config(pipeline)
    if compile:
        # Tier 1 sees full batches of one size: one compiled graph. Later tiers get a different
        # number of images every batch, so they stay eager rather than recompile per size.
        cfg = with_backend(cfg, "auto", stages={s.name for s in cfg.tiers[0].stages}, compile=True, max_batch=batch)
    pipe = Pipeline(cfg, path.parent, device=device)
    decisions: list = []
    batches = _batches(blobs, batch)

    def decode(b: list[bytes]) -> list:
        return decoder.decode(b) if decoder is not None else [decode_image(x) for x in b]

    try:
        pipe.run_decoded(decode(batches[0]), run_all=run_all)  # warm-up (compiles)
        # Decode runs one batch ahead in a thread, overlapping the cascade (as a server's request
        # handlers decode while the batcher runs the previous batch).
        with ThreadPoolExecutor(max_workers=1) as ahead:
            nxt = ahead.submit(decode, batches[0])
            n, k, times = 0, 0, []
            c0 = time.process_time()
            t0 = time.perf_counter()
            while True:
                t = time.perf_counter()
                imgs = nxt.result()
                k += 1
                nxt = ahead.submit(decode, batches[k % len(batches)])
                decisions.extend(pipe.run_decoded(imgs, run_all=run_all))
                n += len(imgs)
                times.append((time.perf_counter() - t) * 1000.0)
                if time.perf_counter() - t0 >= seconds and k >= 2:
                    break
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - c0
            nxt.result()
        res = (n, elapsed, times, cpu)
    finally:
        pipe.close()
        if decoder is not None:
            decoder.close()
    reach: dict[str, list[float]] = defaultdict(list)
    for d in decisions:
        for rep in d.stages:
            reach[rep.stage].append(rep.latency_ms)
    n = max(1, len(decisions))
    stages = {k: {"ms_per_image": float(np.mean(v)), "share_of_images": len(v) / n} for k, v in reach.items()}
    past = sum(1 for d in decisions if d.exit_tier > 0) / n
    name = f"pipeline '{pipeline}' from JPEG bytes" + (", every tier on every image" if run_all else "")
    how = ("; decode: nvJPEG" if not cpu_share else f"; decode: {cpu_share:.0%} of JPEGs by libjpeg on {workers} CPU "
           "threads") if decoder is not None else ""
    return _row(name, device, size, batch, res, stages=stages,
                notes=f"{past:.0%} of images went past tier 1" + ("; torch.compile on" if compile else "") + how)


def precision_check(blobs: list[bytes], size: str, model: str, *, device: str, n: int = 512) -> Row:
    """bf16 against fp32 logits of the classifier on the same decoded, resized inputs (no timing)."""
    import torch

    from workzone.accel.decode import DeviceDecoder, resize_batch
    from workzone.accel.runner import TorchModelRunner
    from workzone.stages._onnx import read_sidecar

    meta = read_sidecar(__import__("pathlib").Path(model))
    side, mode = int(meta.get("input_size", 224)), meta.get("resize", "squash")
    dec = DeviceDecoder(device)
    try:
        imgs = dec.decode(blobs[:n])
    finally:
        dec.close()
    x = resize_batch(imgs, side, mode, device=device)
    out = {}
    for precision in ("float32", "bfloat16"):
        runner = TorchModelRunner(model, device=device, precision=precision, max_batch=len(x))
        out[precision] = runner(x)[runner.output_names[0]].reshape(-1).double().cpu()
    delta = (out["float32"] - out["bfloat16"]).abs()
    flips = int(((out["float32"] > 0) != (out["bfloat16"] > 0)).sum())
    return Row("bf16 vs fp32 classifier logits", device, size, len(x), len(x), 0.0, float("nan"), float("nan"),
               stages={"|delta logit|": {"max": float(delta.max()), "mean": float(delta.mean())}},
               notes=f"max |delta logit| {float(delta.max()):.4f}, mean {float(delta.mean()):.4f}; "
                     f"{flips} of {len(x)} labels at p=0.5 differ (no timing: images/s is not measured)")


def sessions_only(blobs: list[bytes], size: str, pipeline: str, *, batch: int, seconds: float, verifier: bool,
                  scheme: Mapping[str, Any] | None = None) -> Row:
    """The bare onnxruntime sessions of a pipeline's object stages, on inputs prepared beforehand (untimed): the
    floor its rate from bytes is compared with (same images, same run, the pipeline's own sessions and threads).

    Timed per batch of ``batch`` images: the detector's runs over every image (as the stage splits them), and with
    ``verifier`` also the verifier's runs over the candidate crops of the images that reach it in the pipeline
    (found by one untimed pass of the pipeline over the same batches). Left out: decoding, the as-trained copy and
    letterbox, crops, sign OCR, box decoding, fusion, the cascade.

    Args:
        scheme: run the sessions with these :class:`~workzone.stages._onnx.CpuRunParams` (and ``batch_size``)
            instead of the pipeline's, e.g. :data:`~workzone.throughput.parity.OPERATOR_SCHEME`.
    """
    from workzone.api import Pipeline
    from workzone.config.backend import with_stage_params
    from workzone.config.loader import load_pipeline_config
    from workzone.stages._onnx import CpuRunParams
    from workzone.stages.object_verifier import _run_crops
    from workzone.stages.roadwork_detector import _run_image, runs_of

    cfg, path = load_pipeline_config(pipeline)
    if scheme is not None:
        cfg = with_stage_params(cfg, {s.name: {k: v for k, v in scheme.items() if k in type(s.params).model_fields}
                                      for t in cfg.tiers for s in t.stages if isinstance(s.params, CpuRunParams)})
    pipe = Pipeline(cfg, path.parent)
    try:
        by_kind = {st.kind: st for st in pipe.cascade.stages}
        det, ver = by_kind["roadwork_detector"], by_kind.get("object_verifier")
        if verifier and ver is None:
            raise ValueError(f"pipeline {pipeline!r} has no object_verifier stage")
        runner = det._model
        batches = _batches(list(range(len(blobs))), batch)
        imgs = [decode_image(b) for b in blobs]
        inputs = {k: [runner._inputs(r) for r in runs_of([imgs[i] for i in idx], det.params.batch_size)]
                  for k, idx in enumerate(batches)}
        crops: dict[int, list[np.ndarray]] = {}
        for k, idx in enumerate(batches):
            crops[k] = []
            if verifier:
                for i, d in zip(idx, pipe.run_decoded([imgs[i] for i in idx])):
                    boxes = ver._candidates(d.stages) if any(r.stage == ver.name for r in d.stages) else None
                    if boxes:
                        crops[k].append(ver._crops((imgs[i], boxes)))
        keyed = [[k] * len(idx) for k, idx in enumerate(batches)]  # _repeat counts images by len(batch)

        def step(b: list[int]) -> None:
            runner.sessions.map(lambda x: x, _run_image, inputs[b[0]])
            if crops[b[0]]:
                ver._model.map(lambda c: c, _run_crops, crops[b[0]])

        res = _repeat(step, keyed, seconds)
        verified = sum(len(c) for c in crops.values())
        n_crops = sum(len(x) for c in crops.values() for x in c)
    finally:
        pipe.close()
    sp = det.params
    how = (f"runs of {sp.batch_size} image(s) over {runner.sessions.threads} workers, one onnxruntime thread each"
           if sp.parallel == "images" else f"runs of up to {sp.batch_size} images (at least two per batch of 4+), "
           f"one at a time over {runner.sessions.threads} intra-op threads")
    if verifier:
        return _row("object detector + verifier, bare onnxruntime sessions (inputs and crops ready)", "cpu", size,
                    batch, res, notes=f"{how}; the verifier on the {verified} of {len(blobs)} images that reach it "
                                      f"in the pipeline ({n_crops} crops)")
    return _row("object detector, bare onnxruntime session (inputs ready)", "cpu", size, batch, res,
                notes=how + ("" if scheme is None else " (the scheme before issue 23)"))


def object_parity_row(data: str, *, device: str, limit: int | None = None, cpu_share: float = 0.0) -> Row:
    """The torch object path on ``device`` against onnxruntime on the CPU, on a manifest's dev images."""
    from workzone.throughput.parity import dev_jpegs, object_parity

    report, _, _ = object_parity(dev_jpegs(data, limit=limit), device=device, batch=256, cpu_share=cpu_share)
    how = "" if not device.startswith("cuda") else (", nvJPEG decode" if cpu_share == 0 else
                                                     f", {cpu_share:.0%} of JPEGs decoded by libjpeg on CPU threads")
    return Row(f"parity: object decision, torch path vs onnxruntime{how}", device, "dev JPEGs", 256, report.n, 0.0,
               float("nan"), float("nan"),
               stages={"|dp|": {"max": report.max_abs, "share_within_tol": report.within,
                                "flips": float(report.flips), "flips_away_from_threshold": float(report.flips_outside)}},
               notes=report.describe() + " (no timing)")
