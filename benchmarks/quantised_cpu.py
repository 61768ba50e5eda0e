"""Experiment: int8 graphs of the default's object detector and verifier on the CPU. Writes
results/quantised_cpu.md; ships nothing (the pooled leave-one-source-out table was not re-run for them).

Graphs (onnxruntime.quantization):
- int8 static QDQ, per-channel weights, uint8 activations, MinMax calibration on as-trained inputs of 64 train
  images of roadwork-v1 (the detector) and on the crops of their candidates (the verifier), Conv nodes only
  (the activations between stay fp32); the detector once with every Conv, once without its stem and its last
  three Convs (the head that writes the heat map and boxes).
fp16 was not measured: onnxconverter_common's conversion of the detector made a graph onnxruntime refused to load
(a Cast node's output type), and with Cast kept in fp32 the conversion and load had not finished after 10 minutes on
the 2-core machine.
Speed: the bare session, one onnxruntime thread, runs of one image (the shipped scheme's cost per worker): CPU-ms
per image, fastest of 3 over 32 dev images (the verifier: those images' candidate crops, one run per image).
Parity: the default pipeline's probabilities on the 469 dev images with the graph swapped in, against the fp32
graphs' (within 0.02, decisions that differ at 0.5, dev MCC).
Run: python benchmarks/quantised_cpu.py [DATA] [--lock FILE] (with --lock, only the speed runs hold that flock:
the parity runs are not timed).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from workzone.config.backend import with_stage_params
from workzone.config.loader import load_pipeline_config
from workzone.evaluation.metrics import matthews_corrcoef
from workzone.io.images import decode_image
from workzone.stages._onnx import open_session
from workzone.stages.base import StageContext
from workzone.stages.roadwork_detector import ObjectDetectorRunner
from workzone.throughput.machine import describe_machine
from workzone.throughput.parity import compare, dev_jpegs, pipeline_probabilities
from workzone.verified_evidence import candidate_crops, select_candidates

HERE = Path(__file__).resolve().parent


def _reader(name: str, batches: list[np.ndarray]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: b} for b in batches])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    return Reader()


def int8(src: Path, dst: Path, name: str, batches: list[np.ndarray], exclude: Callable[[list], list[str]]) -> Path:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.stem + "_pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
    quantize_static(str(pre), str(dst), _reader(name, batches), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                    nodes_to_exclude=exclude(convs))
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def cpu_ms(path: Path, name: str, runs: list[np.ndarray], images: int) -> float:
    session = open_session(path, threads=1)
    session.run(None, {name: runs[0]})
    best = float("inf")
    for _ in range(3):
        c = time.process_time()
        for x in runs:
            session.run(None, {name: x})
        best = min(best, (time.process_time() - c) / images * 1000.0)
    return best


@contextlib.contextmanager
def _locked(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(HERE.parents[1] / "shared" / "data" / "roadwork-v1"))
    ap.add_argument("--out", default=str(HERE / "results" / "quantised_cpu.md"))
    ap.add_argument("--lock", help="a file to flock around the speed runs (a machine shared with other benchmarks)")
    args = ap.parse_args()
    data = Path(args.data)
    ctx = StageContext()
    det_src, ver_src = ctx.resolve("builtin:roadwork_objects.onnx"), ctx.resolve("builtin:roadwork_verifier.onnx")
    runner = ObjectDetectorRunner(det_src, threads=1)
    from workzone.stages._onnx import read_sidecar

    vm = read_sidecar(ver_src)
    rows = list(csv.DictReader((data / "manifest.csv").open(newline="", encoding="utf-8")))

    def crops_of(imgs: list) -> list[np.ndarray]:
        out = []
        for im, d in zip(imgs, runner.detect(imgs, score_threshold=0.02)):
            c = select_candidates(d, floor=vm["candidate_floor"], most=vm["max_candidates"])
            if len(c):
                out.append(candidate_crops(im.pixels, c[:, :4], size=vm["crop_size"], context=vm["context"],
                                           max_side=vm["source_max_side"]))
        return out

    train = [decode_image(data / r["path"]) for r in rows if r["split"] == "train"][::40][:64]
    det_calib = [runner._inputs([im]) for im in train]
    ver_calib = crops_of(train)
    tmp = Path(tempfile.mkdtemp(prefix="quantised-"))
    t0 = time.perf_counter()
    graphs = {
        "detector int8, every Conv": ("objects", int8(det_src, tmp / "det_int8_all.onnx", "image", det_calib,
                                                      lambda convs: [])),
        "detector int8, stem and head in fp32": ("objects", int8(det_src, tmp / "det_int8_body.onnx", "image",
                                                                 det_calib, lambda convs: [convs[0], *convs[-3:]])),
        "verifier int8, every Conv": ("verify", int8(ver_src, tmp / "ver_int8.onnx", "crops", ver_calib,
                                                     lambda convs: [])),
    }
    made_s = time.perf_counter() - t0
    items = dev_jpegs(data)
    labels = [int(r["label"]) for r in rows if r["split"] == "dev"]
    speed_imgs = [decode_image(b) for _, b in items[:32]]
    det_runs = [runner._inputs([im]) for im in speed_imgs]
    ver_runs = crops_of(speed_imgs)
    with _locked(args.lock):
        speed = {"detector fp32 (shipped)": cpu_ms(det_src, "image", det_runs, len(det_runs)),
                 "verifier fp32 (shipped)": cpu_ms(ver_src, "crops", ver_runs, len(ver_runs))}
        for name, (stage, path) in graphs.items():
            speed[name] = cpu_ms(path, "image", det_runs, len(det_runs)) if stage == "objects" else \
                cpu_ms(path, "crops", ver_runs, len(ver_runs))
        load_after_speed = describe_machine("cpu")["load average (1 min)"]
    cfg, base = load_pipeline_config("default")
    p32 = pipeline_probabilities(cfg, base.parent, items, batch=8)
    variants = {name: {stage: str(path)} for name, (stage, path) in graphs.items()}
    variants["both int8 (detector without stem and head, verifier every Conv)"] = {
        "objects": str(graphs["detector int8, stem and head in fp32"][1]),
        "verify": str(graphs["verifier int8, every Conv"][1])}
    parity = {}
    for name, models in variants.items():
        p = pipeline_probabilities(with_stage_params(cfg, {k: {"model": v} for k, v in models.items()}), base.parent,
                                   items, batch=8)
        parity[name] = (compare(p32, p), matthews_corrcoef(labels, (p > 0.5).astype(int).tolist()))
    mcc32 = matthews_corrcoef(labels, (p32 > 0.5).astype(int).tolist())
    machine = describe_machine("cpu")
    lines = [
        "# int8 object detector and verifier on the CPU (experiment, not shipped)", "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Command: `python benchmarks/quantised_cpu.py {args.data}" + (f" --lock {args.lock}`" if args.lock else "`"),
        "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) +
        f"; load average (1 min) after the speed runs {load_after_speed}", "",
        "Why not shipped: the default's fusion and exits were fitted on the fp32 graphs' out-of-fold scores, and the",
        "pooled leave-one-source-out table was not re-run for these graphs. Calibration: as-trained inputs of "
        f"{len(train)} train images (every 40th) for the detector, the {sum(len(c) for c in ver_calib)} crops of "
        f"their candidates for the verifier; graphs made in {made_s:.0f} s.", "",
        "## Speed (bare session, one onnxruntime thread, runs of one image: the shipped scheme's cost per worker)", "",
        "| graph | CPU-ms per image (fastest of 3, 32 dev images) | x fp32 |", "| --- | ---: | ---: |"]
    for name, ms in speed.items():
        ref = speed["detector fp32 (shipped)" if name.startswith("detector") else "verifier fp32 (shipped)"]
        lines.append(f"| {name} | {ms:.1f} | {ref / ms:.2f} |")
    lines += ["", f"The verifier's rows are per image with candidates ({len(ver_runs)} of 32 images, "
              f"{sum(len(c) for c in ver_runs)} crops).", "",
              f"## Parity: pipeline `default` on the {len(items)} dev images, against the fp32 graphs", "",
              f"fp32 (shipped): dev MCC {mcc32:.3f}.", "",
              "| graphs swapped in | within 0.02 | max abs dp | decisions that differ | of them away from 0.5 +- 0.02 "
              "| dev MCC |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, (rep, mcc) in parity.items():
        lines.append(f"| {name} | {rep.within:.1%} | {rep.max_abs:.3f} | {rep.flips} | {rep.flips_outside} | "
                     f"{mcc:.3f} |")
    lines += ["", "Acceptance for a graph to replace fp32 (issue 23): probabilities within 0.02 on all dev images and "
              "no decision flipped, then the pooled leave-one-source-out table re-run.", ""]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
