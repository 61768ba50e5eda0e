"""Rebuild and check the default's int8 candidate verifier (issue 23, item 4: a cheaper CPU path that keeps the
decision). Writes results/int8_verifier.md; with --write, also src/workzone/models/roadwork_verifier_int8.onnx and
its sidecar.

The graph: onnxruntime static quantisation (QDQ) of the shipped fp32 ``roadwork_verifier.onnx``, int8 weights per
output channel, uint8 activations per tensor from MinMax ranges over the crops the shipped detector proposes on
every 12th train image of roadwork-v1 (the crops the stage cuts: ``candidate_crops`` over its candidates). Only
the nodes of the blocks that a per-block scan found least sensitive are int8 (``QUANTISED_BLOCKS``, their
residual Adds excepted); the stem, blocks 0-5 and 8, the head (1x1 conv to 1280, pooling, classifier, softmax) and
every Add stay fp32. Why: the whole graph in int8 ran 2.0x faster but kept only 91.5 % of dev images within 0.02;
each fp32 part bought parity back at some speed (the variants table, ``--variants``).

Checks, against the fp32 graph, each in this run:
1. the default pipeline's probabilities on the dev images of roadwork-v1 (the issue's bound: within 0.02 for
   >= 99 % of images, no decision flipped except within 0.02 of the threshold);
2. the verifier's per-crop answers on every dev candidate crop (P(work-zone object), its log-odds, the named class);
3. the same pipeline comparison on sources unlike dev: every image of roadwork-v2 and objects-v2's gtsdb_scenes;
4. speed: CPU-ms per image of the bare verifier session, one onnxruntime thread, one run per image over its
   candidates (the shipped scheme's cost per worker), fastest of 3 over 64 dev images (under ``--lock``).
With ``--detector OUT``, instead: the int8 detector variants tried (mixed precision by block), their speed and dev
parity, written to OUT (results/int8_detector_mixed.md).

Run: python benchmarks/int8_verifier.py [DATA] [--lock /work/notes/bench.lock] [--write] [--variants]
       python benchmarks/int8_verifier.py [DATA] --lock /work/notes/bench.lock --detector results/int8_detector_mixed.md
The whole default from JPEG bytes with each verifier, in one run of `workzone bench` (results/bench_cpu_int8.md):
python benchmarks/int8_verifier.py --fp32-pipeline /tmp/default-fp32.yaml && flock /work/notes/bench.lock workzone bench
--device cpu --size 224 --images 64 --batch 8 --cascade-batch 8 --seconds 10 --repeats 3 -p default
-p /tmp/default-fp32.yaml --no-tier1 --no-all-tiers --data ../shared/data/roadwork-v1 --out
benchmarks/results/bench_cpu_int8.md
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from workzone.config.backend import with_stage_params
from workzone.config.loader import load_pipeline_config
from workzone.io.images import decode_image
from workzone.object_evidence import clipped_logit
from workzone.stages._onnx import read_sidecar
from workzone.stages.base import StageContext
from workzone.stages.roadwork_detector import ObjectDetectorRunner
from workzone.throughput.machine import describe_machine
from workzone.throughput.parity import ParityReport, compare, dev_jpegs, pipeline_probabilities
from workzone.verified_evidence import NONE_CLASSES, candidate_crops, select_candidates

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cpu_floor import cpu_ms  # noqa: E402
from quantised_cpu import _locked, _reader  # noqa: E402

MODELS = HERE.parent / "src" / "workzone" / "models"
#: EfficientNet-Lite0 blocks (of 0-15) whose nodes are int8; the rest of the graph stays fp32.
QUANTISED_BLOCKS = (6, 7, 9, 10, 11, 12, 13, 14, 15)
#: Every 12th train image of roadwork-v1 gives the calibration crops.
CALIBRATION_STRIDE = 12
#: Out-of-source checks: (dataset folder, source or None for every row).
OTHER_SOURCES = (("roadwork-v2", None), ("objects-v2", "gtsdb_scenes"))


def block_of(node_name: str) -> int | None:
    """The EfficientNet block a node belongs to (``/_blocks.7/...`` -> 7), ``None`` outside the blocks."""
    m = re.match(r"/_blocks\.(\d+)/", node_name)
    return int(m.group(1)) if m else None


def in_blocks(blocks: Sequence[int], *, adds: bool = False) -> Callable[[Any], bool]:
    """A node filter: the nodes of ``blocks``, their residual Adds only when ``adds``."""
    return lambda n: block_of(n.name) in blocks and (adds or n.op_type != "Add")


def quantise(src: Path, dst: Path, batches: list[np.ndarray], *, keep: Callable[[Any], bool] | None = None,
             input_name: str = "crops", cache: Path | None = None, signed: bool = False) -> Path:
    """Static QDQ int8 of ``src``: per-channel int8 weights, uint8 MinMax activations over ``batches``.

    Args:
        keep: which nodes (of the pre-processed graph) are quantised; ``None``: every node onnxruntime can.
        cache: a calibration-range file reused between graphs of the same source and data.
        signed: int8 activations instead of uint8.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.stem + "_pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    nodes = None if keep is None else [n.name for n in onnx.load(str(pre)).graph.node if keep(n)]
    quantize_static(str(pre), str(dst), _reader(input_name, batches), quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QInt8 if signed else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=nodes,
                    calibration_cache_path=None if cache is None else str(cache))
    pre.unlink()
    return dst


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_items(data: Path, source: str | None) -> list[tuple[str, bytes]]:
    """(path, JPEG bytes) of every row of a manifest, or of one source's rows."""
    with (data / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if source is None or r.get("source") == source]
    return [(r["path"], (data / r["path"]).read_bytes()) for r in rows]


class Crops:
    """The verifier's inputs as the stage makes them: the fp32 detector's candidates, cropped."""

    def __init__(self) -> None:
        ctx = StageContext()
        self.detector = ObjectDetectorRunner(ctx.resolve("builtin:roadwork_objects.onnx"))
        self.meta = read_sidecar(ctx.resolve("builtin:roadwork_verifier.onnx"))

    def of(self, blobs: Sequence[bytes | Path]) -> list[np.ndarray]:
        """One array of crops per image (JPEG bytes or a file) with candidates; decoded one at a time."""
        m, out = self.meta, []
        for blob in blobs:
            im = decode_image(blob)
            c = select_candidates(self.detector.detect([im], score_threshold=0.02)[0], floor=m["candidate_floor"],
                                  most=m["max_candidates"])
            if len(c):
                out.append(candidate_crops(im.pixels, c[:, :4], size=m["crop_size"], context=m["context"],
                                           max_side=m["source_max_side"]))
        return out


def verifier_probs(path: Path, crops: np.ndarray) -> np.ndarray:
    from workzone.stages._onnx import open_session

    s = open_session(path, threads=0)
    return np.concatenate([s.run(None, {"crops": crops[i:i + 64]})[0] for i in range(0, len(crops), 64)]
                          ).astype(np.float64)


def crop_drift(classes: Sequence[str], ref: np.ndarray, new: np.ndarray) -> dict[str, float]:
    """How the int8 verifier's per-crop answers move against fp32's."""
    none = [classes.index(c) for c in NONE_CLASSES]
    p_ref, p_new = 1 - ref[:, none].sum(1), 1 - new[:, none].sum(1)
    dp, dz = np.abs(p_new - p_ref), np.abs(clipped_logit(p_new) - clipped_logit(p_ref))
    return {"crops": len(ref), "dp_p50": float(np.median(dp)), "dp_p99": float(np.percentile(dp, 99)),
            "dp_max": float(dp.max()), "dz_p50": float(np.median(dz)), "dz_p90": float(np.percentile(dz, 90)),
            "dz_p99": float(np.percentile(dz, 99)), "dz_max": float(dz.max()),
            "class_max_dp": float(np.abs(new - ref).max()),
            "argmax_agree": float((new.argmax(1) == ref.argmax(1)).mean()),
            "verified_agree": float(((p_new >= 0.5) == (p_ref >= 0.5)).mean())}


def parity_row(name: str, rep: ParityReport, extra: str = "") -> str:
    return (f"| {name} | {rep.n} | {rep.within:.1%} | {rep.max_abs:.4f} | {rep.flips} | {rep.flips_outside} |"
            + (f" {extra} |" if extra else ""))


def with_sidecar(onnx_path: Path, src_json: Path, extra: dict | None = None) -> Path:
    side = json.loads(src_json.read_text(encoding="utf-8"))
    if extra:
        side["quantisation"] = extra
    onnx_path.with_suffix(".json").write_text(json.dumps(side, indent=2) + "\n", encoding="utf-8")
    return onnx_path


def detector_section(data: Path, cfg: Any, base: Path, items: list, p32: np.ndarray, lock: str | None,
                     tmp: Path) -> list[str]:
    """int8 detector variants: mixed precision by block (stem, blocks, neck, heads), dev parity and speed."""
    ctx = StageContext()
    src = ctx.resolve("builtin:roadwork_objects.onnx")
    runner = ObjectDetectorRunner(src, threads=1)
    with (data / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh)]
    train = [r for r in rows if r["split"] == "train"][::CALIBRATION_STRIDE]
    calib = [runner._inputs([decode_image(data / r["path"])]) for r in train]
    calib = [np.concatenate(calib[i:i + 2]) for i in range(0, len(calib), 2)]

    def part(n: Any) -> str:
        b = block_of(n.name)
        if b is not None:
            return f"b{b}"
        for key, marks in (("stem", ("/Sub", "/Div", "_conv_stem", "/_swish/")),
                           ("neck", ("lateral", "Resize", "/Add", "smooth")), ("heads", ("head_heat", "head_reg"))):
            if any(k in n.name for k in marks):
                return key
        return "decode"  # sigmoid, peak suppression, box sizes: always fp32

    variants = {
        "every node but the decoding tail": lambda n: part(n) != "decode",
        "blocks 4-10, neck and heads (stem, blocks 0-3 fp32)": lambda n: part(n) not in
        ("decode", "stem", "b0", "b1", "b2", "b3"),
        "blocks 6-10, neck and heads": lambda n: part(n) in ("b6", "b7", "b8", "b9", "b10", "neck", "heads"),
        "the two heads' convs only": lambda n: part(n) == "heads",
    }
    cache = tmp / "det_ranges.json"
    made = {name: with_sidecar(quantise(src, tmp / f"det_{k}.onnx", calib, keep=keep, input_name="image",
                                        cache=cache), src.with_suffix(".json"))
            for k, (name, keep) in enumerate(variants.items())}
    speed_in = [runner._inputs([decode_image(b)]) for _, b in items[:32]]
    from workzone.stages._onnx import open_session

    def det_ms(path: Path) -> float:
        s = open_session(path, threads=1, spatial=runner.size)
        return cpu_ms(lambda: [s.run(None, {"image": x}) for x in speed_in], len(speed_in), 3)

    with _locked(lock):
        speed = {"fp32 (shipped)": det_ms(src)} | {name: det_ms(p) for name, p in made.items()}
    lines = ["## The detector: int8 variants tried (none kept the decision)", "",
             "Static QDQ as for the verifier (int8_verifier.md: per-channel int8 weights, uint8 MinMax activations), "
             "calibrated on as-trained "
             f"inputs of {sum(len(c) for c in calib)} train images (every 12th); the sigmoid, peak suppression and "
             "box decoding stay fp32 in every variant. Speed: CPU-ms per image of the bare session, one thread, "
             "runs of one image, fastest of 3 over 32 dev images. Parity: the default pipeline on the dev images "
             "with the graph swapped in (the fp32 verifier).", "",
             "| int8 part | CPU-ms per image | x fp32 | images | within 0.02 | max abs dp | decisions differ | "
             "of them away from 0.5 +- 0.02 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| none: fp32 (shipped) | {speed['fp32 (shipped)']:.1f} | 1.00 | | | | | |"]
    for name, path in made.items():
        rep = compare(p32, pipeline_probabilities(with_stage_params(cfg, {"objects": {"model": str(path)}}),
                                                  base, items, batch=8))
        lines.append(f"| {name} | {speed[name]:.1f} | {speed['fp32 (shipped)'] / speed[name]:.2f} |"
                     + parity_row("", rep)[4:])
    lines += ["", "Why none passes: the pipeline reads the detector through more than its best score. Its candidates "
              "(boxes scoring >= 0.05, the best 8) and their boxes choose the verifier's crops, so a box crossing the "
              "floor or a box edge moving a few pixels changes what the verifier sees. Even the heads' convs alone "
              "in int8 moved 6 % of dev probabilities by more than 0.02.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(HERE.parents[1] / "shared" / "data" / "roadwork-v1"))
    ap.add_argument("--out", default=str(HERE / "results" / "int8_verifier.md"))
    ap.add_argument("--lock", help="a file to flock around the speed runs (a machine shared with other benchmarks)")
    ap.add_argument("--write", action="store_true", help="write the graph and its sidecar into the package's models")
    ap.add_argument("--variants", action="store_true", help="also build and check the other verifier variants")
    ap.add_argument("--detector", metavar="OUT", help="instead: the int8 detector variants (a negative result), "
                    "written to OUT")
    ap.add_argument("--fp32-pipeline", metavar="FILE", help="only write the default pipeline with the fp32 verifier "
                    "to FILE (for `workzone bench -p default -p FILE`: both in one run) and stop")
    args = ap.parse_args()
    if args.fp32_pipeline:
        from workzone.config.loader import dump_pipeline

        cfg, _ = load_pipeline_config("default")
        fp32 = with_stage_params(cfg, {"verify": {"model": "builtin:roadwork_verifier.onnx"}})
        Path(args.fp32_pipeline).write_text(dump_pipeline(fp32.model_copy(update={"name": "default-fp32-verifier"})),
                                            encoding="utf-8")
        return
    data = Path(args.data)
    if args.detector:
        tmp = Path(tempfile.mkdtemp(prefix="int8-detector-"))
        cfg, base = load_pipeline_config("default")
        cfg32 = with_stage_params(cfg, {"verify": {"model": "builtin:roadwork_verifier.onnx"}})
        items = dev_jpegs(data)
        p32 = pipeline_probabilities(cfg32, base.parent, items, batch=8)
        machine = describe_machine("cpu")
        lines = ["# int8 object detector, mixed precision (issue 23, item 4): not shipped", "",
                 f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
                 "- Command: `python benchmarks/int8_verifier.py " + " ".join(sys.argv[1:]) + "`",
                 "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
                 *detector_section(data, cfg32, base.parent, items, p32, args.lock, tmp)]
        Path(args.detector).write_text("\n".join(lines), encoding="utf-8")
        print("\n".join(lines))
        shutil.rmtree(tmp, ignore_errors=True)
        return
    t0 = time.perf_counter()
    src = MODELS / "roadwork_verifier.onnx"
    tmp = Path(tempfile.mkdtemp(prefix="int8-verifier-"))
    crops = Crops()
    classes = crops.meta["classes"]
    with (data / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        train = [r for r in csv.DictReader(fh) if r["split"] == "train"][::CALIBRATION_STRIDE]
    calib = np.concatenate(crops.of([data / r["path"] for r in train]))
    batches = [calib[i:i + 32] for i in range(0, len(calib), 32)]
    cache = tmp / "ranges.json"
    graph = quantise(src, tmp / "roadwork_verifier_int8.onnx", batches, keep=in_blocks(QUANTISED_BLOCKS),
                     cache=cache)
    with_sidecar(graph, src.with_suffix(".json"))
    made_s = time.perf_counter() - t0

    # 1. The default pipeline on dev, fp32 against int8.
    cfg, base = load_pipeline_config("default")
    cfg32 = with_stage_params(cfg, {"verify": {"model": str(src)}})
    items = dev_jpegs(data)
    p32 = pipeline_probabilities(cfg32, base.parent, items, batch=8)

    def swapped(path: Path, its: list, ref: np.ndarray) -> ParityReport:
        return compare(ref, pipeline_probabilities(with_stage_params(cfg, {"verify": {"model": str(path)}}),
                                                   base.parent, its, batch=8))

    dev_rep = swapped(graph, items, p32)
    # 2. Per crop.
    dev_crops = crops.of([b for _, b in items])
    all_crops = np.concatenate(dev_crops)
    drift = crop_drift(classes, verifier_probs(src, all_crops), verifier_probs(graph, all_crops))
    # 3. Other sources.
    others = []
    for folder, source in OTHER_SOURCES:
        root = data.parent / folder
        if not (root / "manifest.csv").is_file():
            continue
        its = manifest_items(root, source)
        ref = pipeline_probabilities(cfg32, base.parent, its, batch=8)
        others.append((f"{folder}" + (f" {source}" if source else " (every image)"), swapped(graph, its, ref),
                       int((ref > 0.5).sum())))
    # 4. Speed.
    speed_runs = dev_crops[:64]
    n_speed = len(speed_runs)

    def ver_ms(path: Path) -> float:
        from workzone.stages._onnx import open_session

        s = open_session(path, threads=1)
        return cpu_ms(lambda: [s.run(None, {"crops": c}) for c in speed_runs], n_speed, 3)

    variants: dict[str, Path] = {}
    if args.variants:
        everything = with_sidecar(quantise(src, tmp / "v_all.onnx", batches, cache=cache), src.with_suffix(".json"))
        tried = {
            "every node but the head (conv to 1280, pooling, classifier, softmax)":
                lambda n: block_of(n.name) is not None or n.name in ("/Sub", "/Div") or "_conv_stem" in n.name
                or n.name.startswith("/_swish/"),
            "blocks 1-15 with their Adds (stem, block 0, head fp32)": in_blocks(range(1, 16), adds=True),
            "blocks 4, 6-15 with their Adds": in_blocks((4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), adds=True),
            "blocks 4, 6-15 without their Adds": in_blocks((4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
        }
        variants = {"every node int8": everything} | {
            name: with_sidecar(quantise(src, tmp / f"v_{k}.onnx", batches, keep=keep, cache=cache),
                               src.with_suffix(".json")) for k, (name, keep) in enumerate(tried.items())}
        variants["this graph's nodes, int8 activations (s8s8)"] = with_sidecar(quantise(
            src, tmp / "v_s8.onnx", batches, keep=in_blocks(QUANTISED_BLOCKS), signed=True,
            cache=cache), src.with_suffix(".json"))
    with _locked(args.lock):
        load_before = describe_machine("cpu")["load average (1 min)"]
        speed = {"fp32 (shipped)": ver_ms(src), "int8 (this graph)": ver_ms(graph)}
        speed |= {name: ver_ms(p) for name, p in variants.items()}
        load_after = describe_machine("cpu")["load average (1 min)"]
    variant_rows = []
    if variants:
        variant_rows.append(f"| **this graph**: blocks {', '.join(map(str, QUANTISED_BLOCKS))} without their Adds | "
                            f"{speed['int8 (this graph)']:.2f} | "
                            f"{speed['fp32 (shipped)'] / speed['int8 (this graph)']:.2f} | {dev_rep.within:.1%} | "
                            f"{dev_rep.max_abs:.4f} | {dev_rep.flips} | {drift['dz_p50']:.3f} | "
                            f"{drift['dz_p99']:.3f} |")
    for name, path in variants.items():
        rep = swapped(path, items, p32)
        d = crop_drift(classes, verifier_probs(src, all_crops), verifier_probs(path, all_crops))
        variant_rows.append(f"| {name} | {speed[name]:.2f} | {speed['fp32 (shipped)'] / speed[name]:.2f} | "
                            f"{rep.within:.1%} | {rep.max_abs:.4f} | {rep.flips} | {d['dz_p50']:.3f} | "
                            f"{d['dz_p99']:.3f} |")

    passes = dev_rep.within >= 0.99 and dev_rep.flips_outside == 0
    quant = {
        "format": "onnxruntime static quantisation, QDQ (quantize_static)",
        "weights": "int8, per output channel",
        "activations": "uint8, per tensor, MinMax ranges",
        "calibration": f"{len(calib)} crops: the shipped detector's candidates on every {CALIBRATION_STRIDE}th train "
                       f"image of roadwork-v1 ({len(train)} images), cut as the stage cuts them",
        "int8_nodes": f"EfficientNet-Lite0 blocks {', '.join(map(str, QUANTISED_BLOCKS))} except their residual Adds",
        "fp32_nodes": "input scaling, stem, blocks 0-5 and 8, every Add, head conv, pooling, classifier, softmax",
        "float_model": src.name,
        "made_from_sha256": sha256(src),
        "onnxruntime": describe_machine("cpu")["onnxruntime"],
        "command": "python benchmarks/int8_verifier.py --write",
        "parity": {"dev_images": dev_rep.n, "within_0.02": round(dev_rep.within, 4),
                   "max_abs_dp": round(dev_rep.max_abs, 4), "decisions_differ": dev_rep.flips,
                   "away_from_threshold": dev_rep.flips_outside,
                   "crop_verified_agree": round(drift["verified_agree"], 4),
                   "other_sources": {name: {"images": r.n, "within_0.02": round(r.within, 4), "decisions_differ":
                                            r.flips} for name, r, _ in others}},
        "speed": {"fp32_cpu_ms_per_image": round(speed["fp32 (shipped)"], 2),
                  "int8_cpu_ms_per_image": round(speed["int8 (this graph)"], 2)},
        "results": "benchmarks/results/int8_verifier.md",
    }
    if args.write:
        if not passes:
            raise SystemExit(f"not written: the graph fails the parity bound on dev ({dev_rep.describe()})")
        target = MODELS / "roadwork_verifier_int8.onnx"
        target.write_bytes(graph.read_bytes())
        with_sidecar(target, src.with_suffix(".json"), quant)

    machine = describe_machine("cpu")
    lines = [
        "# int8 candidate verifier for the CPU default (issue 23, item 4)", "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- Command: `python benchmarks/int8_verifier.py " + " ".join(sys.argv[1:]) + "`",
        "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) +
        f"; load average (1 min) before the speed runs {load_before}, after them {load_after}",
        f"- Graph: {quant['format']}; weights {quant['weights']}; activations {quant['activations']}; calibration "
        f"{quant['calibration']}; int8: {quant['int8_nodes']}; fp32: {quant['fp32_nodes']}. Made in {made_s:.0f} s, "
        f"{graph.stat().st_size / 1e6:.1f} MB (fp32 {src.stat().st_size / 1e6:.1f} MB).", "",
        f"Verdict: {'passes' if passes else 'fails'} the parity bound on dev"
        + (" and is the default's verifier (`pipelines/default.yaml`); the fp32 graph stays selectable "
           "(`model: builtin:roadwork_verifier.onnx`) and is what the stage loads on a CUDA device." if passes else
           "; not shipped."), "",
        "## 1. The default pipeline, fp32 verifier against int8", "",
        "| images | n | within 0.02 | max abs dp | decisions differ | of them away from 0.5 +- 0.02 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        parity_row("roadwork-v1 dev", dev_rep), "",
        "Bound (issue 23): within 0.02 for >= 99 % of images and no decision flipped except within 0.02 of 0.5.", "",
        "## 2. The verifier's answers per crop (every candidate crop of the dev images)", "",
        f"{drift['crops']} crops. P(work-zone object) = 1 - P(none) - P(sign_other): |change| median "
        f"{drift['dp_p50']:.4f}, 99th percentile {drift['dp_p99']:.4f}, largest {drift['dp_max']:.3f}; its clipped "
        f"log-odds (what the verified decision reads) move by a median {drift['dz_p50']:.3f}, 90th percentile "
        f"{drift['dz_p90']:.3f}, 99th {drift['dz_p99']:.3f}, largest {drift['dz_max']:.2f}. The largest change of any "
        f"class probability: {drift['class_max_dp']:.3f}. Same named class: {drift['argmax_agree']:.2%} of crops; "
        f"same verified/not verified (P >= 0.5): {drift['verified_agree']:.2%}.", "",
        "## 3. Sources unlike dev (the default pipeline, fp32 verifier against int8)", "",
        "| images | n | within 0.02 | max abs dp | decisions differ | of them away from 0.5 +- 0.02 | "
        "called road work by fp32 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[parity_row(name, r, str(pos)) for name, r, pos in others], "",
        "The verifier's training pack (`workzone train verifier-pack`) stores backbone features, not crops, so it "
        "cannot be scored by another graph; these whole images stand in for it.", "",
        "## 4. Speed of the bare verifier session", "",
        f"One onnxruntime thread, one run per image over its candidates (the shipped scheme's cost per worker), "
        f"CPU-ms per image, fastest of 3 over {n_speed} dev images with candidates "
        f"({sum(len(c) for c in speed_runs)} crops).", "",
        "| graph | CPU-ms per image | x fp32 |", "| --- | ---: | ---: |",
        *[f"| {name} | {ms:.2f} | {speed['fp32 (shipped)'] / ms:.2f} |" for name, ms in speed.items()
          if name in ("fp32 (shipped)", "int8 (this graph)")], ""]
    if variant_rows:
        lines += ["## Verifier variants tried (same calibration; dev pipeline parity and per-crop log-odds change)", "",
                  "| int8 part | CPU-ms per image | x fp32 | within 0.02 | max abs dp | decisions differ | "
                  "crop dz median | crop dz p99 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                  *variant_rows, "",
                  "How the int8 part was chosen: a scan with each block alone in int8 (while developing this "
                  "script; the crops' log-odds change against fp32) put most of the error in the stem, block 0 and "
                  "the head, then blocks 1, 2, 3, 5 and 8; the rows above take those parts back to fp32 step by "
                  "step. Calibration ranges are shared by every row (MinMax over the same crops).", ""]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
