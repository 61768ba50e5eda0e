"""Where the default pipeline's CPU time goes from JPEG bytes, and what that bounds its rate to on this machine.
Writes results/cpu_floor.md (issue 23, item 4: the CPU path).

1. Each step of the default pipeline on one thread, one after another (no second run beside it): CPU-ms per
   image, fastest of ``--repeats`` over ``--images`` dev images of roadwork-v1; then the whole pipeline from bytes
   with its detector and verifier on one thread (the difference to the steps' sum is the cascade's own work).
2. Two runs at once on the two cores (what the shipped scheme does: runs of one image, one per core): the CPU
   each costs against one run alone.
3. onnxruntime settings and run sizes tried on the two sessions (one thread, same inputs).
4. With ``--parity``: the detector run on a window of its letterboxed input (the padding trimmed to the 32-px
   grid), the pipeline's probabilities on every dev image against the shipped ones.

Run under the shared lock: flock /work/notes/bench.lock python benchmarks/cpu_floor.py [DATA] [--parity]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from workzone.api import Pipeline
from workzone.config.backend import with_stage_params
from workzone.config.loader import load_pipeline_config
from workzone.io.images import decode_image
from workzone.object_evidence import DETECTION_FLOOR, MAX_DETECTIONS
from workzone.stages.object_verifier import _run_crops
from workzone.stages.roadwork_detector import _run_image, _to_image_coords, decode_detections
from workzone.throughput.machine import describe_machine
from workzone.throughput.parity import compare, dev_jpegs, pipeline_probabilities

HERE = Path(__file__).resolve().parent
ONE_THREAD = {"objects": {"threads": 1}, "verify": {"threads": 1}}


def cpu_ms(work: Callable[[], Any], n: int, repeats: int) -> float:
    """CPU-ms per item of ``work`` (which handles ``n`` items), fastest of ``repeats`` after one untimed call."""
    work()
    best = float("inf")
    for _ in range(repeats):
        c = time.process_time()
        work()
        best = min(best, time.process_time() - c)
    return best / n * 1000.0


def at_once(works: Sequence[Callable[[], Any]], repeats: int) -> tuple[float, float]:
    """(CPU s, wall s) of running ``works`` in parallel threads, fastest of ``repeats``."""
    cpu, wall = float("inf"), float("inf")
    with ThreadPoolExecutor(len(works)) as ex:
        for _ in range(repeats + 1):
            c, w = time.process_time(), time.perf_counter()
            list(ex.map(lambda f: f(), works))
            cpu, wall = min(cpu, time.process_time() - c), min(wall, time.perf_counter() - w)
    return cpu, wall


def session(path: Path, *, spatial: tuple[int, int] | None = None, arena: bool = False, config: dict | None = None,
            disabled: Sequence[str] = (), level: str = "ORT_ENABLE_ALL") -> Any:
    """One-thread onnxruntime session as the stages open theirs (no arena), with one setting changed."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.enable_cpu_mem_arena = arena
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    for k, v in (config or {}).items():
        opts.add_session_config_entry(k, v)
    if spatial is not None:
        opts.add_free_dimension_override_by_name("h", spatial[0])
        opts.add_free_dimension_override_by_name("w", spatial[1])
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))


class WindowedDetector:
    """The detector on the part of its letterboxed input that holds the image, the padding trimmed to the 32-px grid
    (the network's coarsest stride, so every kept pixel sits where it sat), the output put back in the full grid."""

    def __init__(self, path: Path) -> None:
        self.path, self.sessions, self.lock = path, {}, threading.Lock()

    def __call__(self, _session: Any, x: np.ndarray) -> np.ndarray:
        side, outs = x.shape[-1], []
        for xi in x:
            rows, cols = np.flatnonzero(xi.any(axis=(0, 2))), np.flatnonzero(xi.any(axis=(0, 1)))
            if not len(rows):
                rows = cols = np.arange(side)
            r0, r1 = rows[0] // 32 * 32, -(-(rows[-1] + 1) // 32) * 32
            c0, c1 = cols[0] // 32 * 32, -(-(cols[-1] + 1) // 32) * 32
            with self.lock:
                s = self.sessions.get((r1 - r0, c1 - c0))
                if s is None:
                    s = self.sessions[(r1 - r0, c1 - c0)] = session(self.path, spatial=(r1 - r0, c1 - c0))
            o = s.run(None, {"image": np.ascontiguousarray(xi[None, :, r0:r1, c0:c1])})[0][0]
            full = np.zeros((o.shape[0], side // 8, side // 8), np.float32)
            full[:, r0 // 8:r1 // 8, c0 // 8:c1 // 8] = o
            outs.append(full)
        return np.stack(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(HERE.parents[1] / "shared" / "data" / "roadwork-v1"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parity", action="store_true", help="also the windowed detector's parity on every dev image")
    ap.add_argument("--out", default=str(HERE / "results" / "cpu_floor.md"))
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    items = dev_jpegs(args.data)
    blobs = [b for _, b in items[:args.images]]
    n, reps = len(blobs), args.repeats
    cfg, path = load_pipeline_config("default")
    models = path.parent.parent / "models"
    imgs = [decode_image(b) for b in blobs]
    steps: list[tuple[str, float]] = []
    with Pipeline(with_stage_params(cfg, ONE_THREAD), path.parent) as pipe:
        st = {s.kind: s for s in pipe.cascade.stages}
        det, ver, ocr = st["roadwork_detector"], st["object_verifier"], st["sign_ocr"]
        runner = det._model
        xs = [runner._inputs([im]) for im in imgs]
        raws = [_run_image(runner.sessions.wide, x)[0] for x in xs]
        found = [pipe.run_decoded(imgs[i:i + 8]) for i in range(0, n, 8)]
        boxes = [ver._candidates(d.stages) for ds in found for d in ds]
        crops = [ver._crops((im, b)) for im, b in zip(imgs, boxes)]
        probs = [_run_crops(ver._model.wide, c) for c in crops]

        def det_post() -> None:
            for o, im in zip(raws, imgs):
                d = _to_image_coords(decode_detections(o, score_threshold=DETECTION_FLOOR,
                                                       max_detections=MAX_DETECTIONS,
                                                       num_classes=len(runner.class_names)), im.width, im.height,
                                     runner.size)
                runner.decision.log_odds(d, float(im.height))
                runner.decision.contributions(d, float(im.height))

        steps = [
            ("decode (Pillow, every guard)", cpu_ms(lambda: [decode_image(b) for b in blobs], n, reps)),
            ("sign OCR stage", cpu_ms(lambda: [ocr._predict_sync(imgs[i:i + 8]) for i in range(0, n, 8)], n, reps)),
            ("detector input: as-trained copy (Lanczos to 320 px, JPEG 72)",
             cpu_ms(lambda: [runner._as_trained(im.pixels) for im in imgs], n, reps)),
            ("detector input: the copy letterboxed to 384 px",
             cpu_ms(lambda: [runner._inputs([im]) for im in imgs], n, reps)),
            ("detector session (1 thread)", cpu_ms(lambda: [_run_image(runner.sessions.wide, x) for x in xs], n, reps)),
            ("detector boxes and decision", cpu_ms(det_post, n, reps)),
            ("verifier crops", cpu_ms(lambda: [ver._crops((im, b)) for im, b in zip(imgs, boxes)], n, reps)),
            ("verifier session (1 thread, one run per image)",
             cpu_ms(lambda: [_run_crops(ver._model.wide, c) for c in crops], n, reps)),
            ("verifier decision", cpu_ms(lambda: [ver._verify(b, p) for b, p in zip(boxes, probs)], n, reps)),
        ]
        # The as-trained copy is inside the letterbox step's time; show the letterbox alone.
        steps[3] = (steps[3][0], steps[3][1] - steps[2][1])
        whole = cpu_ms(lambda: [pipe.run_decoded([decode_image(b) for b in blobs[i:i + 8]])
                                for i in range(0, n, 8)], n, reps)
        per_crop = sum(len(c) for c in crops) / n
    with Pipeline(cfg, path.parent) as shipped:
        shipped.run_decoded([decode_image(b) for b in blobs[:8]])
        best = (float("inf"), float("inf"))
        for _ in range(reps):
            c0, w0 = time.process_time(), time.perf_counter()
            for i in range(0, n, 8):
                shipped.run_decoded([decode_image(b) for b in blobs[i:i + 8]])
            best = min(best, ((time.process_time() - c0) / n * 1000.0, (time.perf_counter() - w0) / n * 1000.0))
    # The stages' own session settings (one thread, no arena, the detector's input size fixed), opened afresh.
    dpath, vpath = models / "roadwork_objects.onnx", models / "roadwork_verifier.onnx"
    sq = (runner.size, runner.size)
    det_one, ver_one = session(dpath, spatial=sq), session(vpath)
    det_all = lambda: [_run_image(det_one, x) for x in xs]  # noqa: E731
    ver_all = lambda: [_run_crops(ver_one, c) for c in crops]  # noqa: E731
    pairs = [("detector", [det_all]), ("detector + detector", [det_all, det_all]),
             ("verifier", [ver_all]), ("verifier + verifier", [ver_all, ver_all]),
             ("detector + verifier", [det_all, ver_all])]
    contention = [(name, *at_once(works, reps)) for name, works in pairs]

    det_runs = lambda s: (lambda: [_run_image(s, x) for x in xs])  # noqa: E731
    by8 = lambda s: (lambda: [_run_crops(s, c) for c in crops])  # noqa: E731
    allc = np.concatenate(crops)
    by_k = lambda s, k: (lambda: [_run_crops(s, allc[i:i + k]) for i in range(0, len(allc), k)])  # noqa: E731
    settings = [
        ("detector", "as shipped (no arena, every graph optimisation)", det_all),
        ("detector", "memory arena on", det_runs(session(dpath, spatial=sq, arena=True))),
        ("detector", "denormals as zero", det_runs(session(dpath, spatial=sq,
                                                           config={"session.set_denormal_as_zero": "1"}))),
        ("detector", "QuickGelu fusion off (Sigmoid and Mul kept apart)",
         det_runs(session(dpath, spatial=sq, disabled=["QuickGeluFusion"]))),
        ("detector", "NCHWc layout off", det_runs(session(dpath, spatial=sq, disabled=["NchwcTransformer"]))),
        ("verifier", "as shipped: one run per image (its candidates, ~8 crops)", ver_all),
        ("verifier", "memory arena on", by8(session(vpath, arena=True))),
        ("verifier", "runs of 1 crop", by_k(ver_one, 1)),
        ("verifier", "runs of 16 crops", by_k(ver_one, 16)),
        ("verifier", "runs of 64 crops", by_k(ver_one, 64)),
    ]
    tried = [(model, what, cpu_ms(work, n, reps)) for model, what, work in settings]
    parity = None
    if args.parity:
        import workzone.stages.roadwork_detector as rd

        p_ref = pipeline_probabilities(cfg, path.parent, items, batch=8)
        windowed = WindowedDetector(models / "roadwork_objects.onnx")
        rd._run_image = windowed  # the stage looks its run function up at call time
        try:
            p_new = pipeline_probabilities(cfg, path.parent, items, batch=8)
        finally:
            rd._run_image = _run_image
        parity = (compare(p_ref, p_new), sorted(windowed.sessions))
    write(args, steps, whole, best, per_crop, contention, tried, parity, load_before, n)


def write(args: argparse.Namespace, steps: list, whole: float, shipped: tuple[float, float], per_crop: float, contention: list, tried: list,
          parity: Any, load_before: float, n: int) -> None:
    machine = describe_machine("cpu")
    total = sum(v for _, v in steps)
    sessions = dict(steps)["detector session (1 thread)"] + dict(steps)["verifier session (1 thread, one run per image)"]
    cores = len(os.sched_getaffinity(0))
    alone = {name: (cpu, wall) for name, cpu, wall in contention}
    lines = [
        "# The default pipeline's CPU time from JPEG bytes, step by step, and the rate it bounds",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Command: `flock /work/notes/bench.lock python benchmarks/cpu_floor.py {args.data} --images {args.images} "
        f"--repeats {args.repeats}" + (" --parity`" if args.parity else "`"),
        "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items())
        + f"; load average (1 min) before the runs {load_before:.1f}",
        f"- Inputs: the first {n} dev images of {Path(args.data).name} (JPEG bytes in memory; {per_crop:.1f} verifier "
        "crops per image); CPU time of this process, fastest of "
        f"{args.repeats} (a busy machine inflates CPU time too, through shared caches, never deflates it)",
        "",
        "## 1. Each step on one thread, nothing beside it",
        "",
        "| step | CPU-ms per image | share |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {v:.2f} | {v / total:.0%} |" for name, v in steps],
        f"| **sum of the steps** | **{total:.1f}** | 100% |",
        f"| whole pipeline from bytes, detector and verifier on one thread (batches of 8) | {whole:.1f} | |",
        f"| of it the rest (whole minus the steps: the cascade's own work, and the steps' extra cost beside each "
        f"other, as the detector's next input is made while it runs) | {whole - total:.1f} | |",
        f"| whole pipeline from bytes as shipped (runs of one image over {cores} workers), CPU-ms per image | "
        f"{shipped[0]:.1f} | |",
        f"| the same, wall-ms per image ({1000 / shipped[1]:.0f} images/s) | {shipped[1]:.1f} | |",
        "",
        f"The two sessions take {sessions:.1f} CPU-ms per image: on {cores} cores with nothing else running and no "
        f"cost for running two at once, they alone would allow at most {cores * 1000 / sessions:.0f} images/s, the "
        f"steps together {cores * 1000 / total:.0f} images/s and the whole pipeline on one thread "
        f"{cores * 1000 / whole:.0f} images/s.",
        "",
        "## 2. Two runs at once (the shipped scheme: one image per core)",
        "",
        "| runs | CPU s | wall s | CPU against the runs alone |",
        "| --- | ---: | ---: | ---: |",
    ]
    base = {"detector": alone["detector"][0], "verifier": alone["verifier"][0]}
    for name, cpu, wall in contention:
        parts = name.split(" + ")
        lines.append(f"| {name} ({n} images each) | {cpu:.2f} | {wall:.2f} | {cpu / sum(base[p] for p in parts):.2f}x |")
    lines += [
        "",
        "A ratio above 1.00x is CPU lost to running the two at once (shared memory bandwidth and last-level cache: "
        "the detector's activations at 384 px are megabytes per layer; other users' processes add to it).",
        "",
        "## 3. onnxruntime settings and run sizes (one thread, the same inputs)",
        "",
        "| session | setting | CPU-ms per image |",
        "| --- | --- | ---: |",
        *[f"| {model} | {what} | {v:.2f} |" for model, what, v in tried],
        "",
        best_saving(tried),
    ]
    if parity is not None:
        rep, shapes = parity
        lines += [
            "",
            "## 4. The detector on a window of its input (the letterbox padding trimmed), against the shipped pipeline",
            "",
            f"Pipeline `default` on the {rep.n} dev images, the detector run on the rows (or columns) of its 384-px "
            "letterboxed input that hold the image, widened to the 32-px grid, one session per window shape "
            f"({len(shapes)} shapes); the output put back in the full grid. {rep.describe()}. Not shipped: it fails "
            "the bound (within 0.02 for 99 % of images, no decision flipped away from the threshold); the detector "
            "learnt from letterboxed inputs and its scores depend on the black bars.",
        ]
    lines += ["", f"Load average (1 min) after the runs: {os.getloadavg()[0]:.1f}.", ""]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


def best_saving(tried: list[tuple[str, str, float]]) -> str:
    """One line: the largest saving of any setting against its session's shipped one (the first row of each)."""
    shipped = {}
    for model, _, v in tried:
        shipped.setdefault(model, v)
    model, what, v = max(tried, key=lambda t: 1 - t[2] / shipped[t[0]])
    return (f"The largest saving against the shipped setting: {1 - v / shipped[model]:.0%} of the {model}'s CPU "
            f"({what}); a saving of a few percent is within the run-to-run spread of this shared machine.")


if __name__ == "__main__":
    main()
