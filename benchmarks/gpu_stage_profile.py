"""Where default-gpu's object decision spends a batch on the device, step by step (issue 23).

``workzone bench`` times the whole decision from JPEG bytes; this times each step of it on the same batch, with
the device synchronised around each (``torch.cuda.synchronize`` + ``perf_counter``; min and median of
``--repeats``), for the bench's synthetic JPEGs (``synth_jpegs``: crops of ``samples/``, quality 75):

1. decode: :class:`~workzone.accel.decode.DeviceDecoder` (nvJPEG on CUDA; Pillow on the CPU);
2. stack: the decoded [3, H, W] tensors into one uint8 batch;
3. shrink: the Lanczos shrink to the sidecar's ``source_max_side`` (Pillow's weights; skipped below it);
4. JPEG round trip at ``source_jpeg_quality`` (libjpeg's integer arithmetic);
5. letterbox to the detector's input (Pillow's bilinear), / 255, to the runner's dtype;
6. steps 2-5 as ``DeviceObjectDetector.inputs`` runs them, eager and compiled (one ``torch.compile``'d function,
   ``compile_treatment``), and the compiled pixels against the eager ones (max abs difference);
7. the detector network (the runner: compiled with ``--compile``, the default on CUDA);
8. box decoding and the decision;
9. ``detect()`` end to end (steps 2-8 and the copy to the host), with either treatment.

A first call of a compiled function compiles: timed apart, never in the step rows. ``--seconds`` caps the run
(checked between steps: a step that would start past it is reported as skipped). Writes a markdown file with the
machine and its load, and prints it::

    python benchmarks/gpu_stage_profile.py --device cuda --size 224 --size 640 --batch 1024 \\
        --out benchmarks/results/gpu_stage_profile.md
    python benchmarks/gpu_stage_profile.py --device cpu --size 224 --batch 16   # a CPU run (slow; no GPU meaning)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

FLOOR, MOST = 0.02, 50  # ObjectDetectorRunner.detect's defaults


def _cell(text: str) -> str:
    """A table cell of free text (a compiler's error spans lines and may hold '|', which would end the table)."""
    return " ".join(text.split()).replace("|", "/")


class Profile:
    """Timed steps of one input size, as markdown rows; stops starting steps once ``deadline`` has passed."""

    def __init__(self, sync: Callable[[], None], repeats: int, batch: int, deadline: float) -> None:
        self.sync, self.repeats, self.batch, self.deadline = sync, repeats, batch, deadline
        self.rows: list[str] = []

    def time(self, name: str, fn: Callable[[], Any], note: str | Callable[[], str] = "", *,
             first_call: bool = False) -> Any:
        """Run ``fn`` once untimed (a first call: a compile, a kernel choice) and then ``repeats`` times timed;
        returns its last result. ``note``: text, or a callable read after the first call (what became of a
        compile); ``first_call``: the note also gives the first call's time."""
        if time.perf_counter() > self.deadline:
            self.skip(name, "skipped: past the --seconds budget")
            return None
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        note = note() if callable(note) else note
        if first_call:
            note = f"first call {time.perf_counter() - t:.1f} s; {note}"
        took = []
        for _ in range(self.repeats):
            t = time.perf_counter()
            out = fn()
            self.sync()
            took.append(time.perf_counter() - t)
        best, mid = min(took), statistics.median(took)
        self.rows.append(f"| {name} | {best * 1e3:.2f} | {mid * 1e3:.2f} | {self.batch / best:,.0f} | {_cell(note)} |")
        return out

    def skip(self, name: str, why: str) -> None:
        self.rows.append(f"| {name} | - | - | - | {_cell(why)} |")


def profile_size(side: int, args: argparse.Namespace, det: Any, comp: Any, sources: list, sync: Callable[[], None],
                 deadline: float) -> list[str]:
    import torch

    from workzone.accel.decode import DeviceDecoder
    from workzone.accel.device_image import image_tensor
    from workzone.accel.jpeg_roundtrip import jpeg_roundtrip
    from workzone.accel.resample import letterbox_like_pillow, resize_like_pillow
    from workzone.throughput.inputs import synth_jpegs

    blobs = synth_jpegs(args.batch, (side, side), quality=75, sources=sources)
    dev = det.device
    prof = Profile(sync, args.repeats, args.batch, deadline)
    lines = [f"### {side}x{side} JPEG q75, batch {args.batch}", "",
             "| step | min ms | median ms | images/s (at min) | note |", "|---|---:|---:|---:|---|"]
    decoder = DeviceDecoder(dev)
    try:
        with torch.inference_mode():
            images = prof.time("decode", lambda: decoder.decode(blobs),
                               "nvJPEG, batched" if dev.startswith("cuda") else "Pillow (CPU path)")
            if images is None:
                return lines + prof.rows
            tensors = [image_tensor(im, dev) for im in images]
            x = prof.time("stack to one uint8 batch", lambda: torch.stack(tensors))
            h, w = int(x.shape[2]), int(x.shape[3])
            xf = x.float()
            side_max, quality = det.source_max_side, det.source_jpeg_quality
            if side_max is not None and max(h, w) > side_max:
                s = side_max / max(h, w)
                nh, nw = max(1, round(h * s)), max(1, round(w * s))
                shrunk = prof.time(f"shrink (Lanczos {w}x{h} -> {nw}x{nh})",
                                   lambda: resize_like_pillow(x.float(), nh, nw, "lanczos"), "includes the float cast")
            else:
                shrunk = xf
                prof.skip("shrink (Lanczos)", f"not needed: {max(h, w)} <= source_max_side {side_max}")
            if quality is not None and shrunk is not None:
                treated = prof.time(f"JPEG round trip (q{quality})", lambda: jpeg_roundtrip(shrunk, quality))
            else:
                treated = shrunk
                prof.skip("JPEG round trip", "the sidecar asks for none")
            if treated is not None:
                prof.time(f"letterbox to {det.size} (+ /255, to {str(det.runner.dtype).replace('torch.', '')})",
                          lambda: letterbox_like_pillow(treated, det.size).div_(255.0).to(det.runner.dtype))
            eager_in = prof.time("steps 2-5 as inputs(), eager", lambda: det.inputs(tensors),
                                 f"chunks of {det.chunk}")
            exact = "not run"
            comp_in = prof.time("steps 2-5 as inputs(), compiled treatment", lambda: comp.inputs(tensors),
                                lambda: "; ".join(comp.notes) or "compiled", first_call=True)
            if comp_in is not None and not comp.compile_treatment:
                # It fell back to eager on its first call: the row timed eager, and there is nothing to compare.
                exact = "not compared: the compiled treatment fell back to eager (see its row)"
            elif comp_in is not None and eager_in is not None:
                px_e, px_c = det.treated(x), comp.treated(x)
                diff = (px_c - px_e).abs()
                exact = (f"compiled vs eager treatment: max abs diff {float(diff.max()):g} pixel levels, "
                         f"{int((diff != 0).sum())} of {diff.numel():,} values differ; detector inputs: max abs "
                         f"diff {float((comp_in.float() - eager_in.float()).abs().max()):g}")
            net_in = comp_in if comp_in is not None else eager_in
            raw = None
            if net_in is not None:
                out_name = det.runner.output_names[0]
                raw = prof.time("detector network", lambda: det.runner(net_in)[out_name].float(),
                                "compiled" if det.runner.compiled else "eager", first_call=True)
            if raw is not None:
                sizes = np.array([(im.width, im.height) for im in images], dtype=np.int64)
                heights = torch.from_numpy(sizes[:, 1].astype(np.float64)).to(dev)

                def boxes_and_decision() -> Any:
                    boxes, counts = det._decode(raw, sizes, FLOOR, MOST)
                    return det._decide(boxes, counts, heights) if det.decision is not None else boxes

                prof.time("box decoding + decision", boxes_and_decision, f"floor {FLOOR}, at most {MOST} boxes")
            prof.time("detect() + to_host, eager treatment",
                      lambda: det.detect(images, floor=FLOOR, max_detections=MOST).to_host())
            prof.time("detect() + to_host, compiled treatment",
                      lambda: comp.detect(images, floor=FLOOR, max_detections=MOST).to_host(),
                      "" if comp.compile_treatment else "fell back to eager")
    finally:
        decoder.close()
    return lines + prof.rows + ["", f"Exactness: {exact}.", ""]


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, action="append", help="square JPEG side (repeat; default 224 and 640)")
    ap.add_argument("--batch", type=int, default=None, help="images per batch (default 1024 on CUDA, 16 on the CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=140.0, help="start no step past this many seconds")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the detector network (default: on CUDA)")
    ap.add_argument("--input-size", type=int, default=None,
                    help="the detector's input side (default: its sidecar's; another needs the sidecar's "
                         "decisions_by_input_size block, as the glance pipeline's 224 px)")
    ap.add_argument("--static-treatment", action="store_true",
                    help="compile the treatment for each shape (dynamic=False) instead of per size class")
    ap.add_argument("--samples", type=Path, default=Path("samples"), help="images the JPEGs are cropped from")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    start = time.perf_counter()

    import torch

    from workzone.accel.objects import DeviceObjectDetector
    from workzone.stages._torch_backend import TorchBackendParams
    from workzone.stages.base import StageContext
    from workzone.stages.roadwork_detector import ObjectDetectorRunner
    from workzone.throughput.inputs import sample_images
    from workzone.throughput.machine import describe_machine

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device; run with --device cpu")
    args.batch = args.batch or (1024 if cuda else 16)
    compile_net = cuda if args.compile is None else args.compile
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # default-gpu's detector as its stage builds it (fp16 on CUDA), batches up to --batch per forward.
    model = StageContext().resolve("builtin:roadwork_objects.onnx")
    path = ObjectDetectorRunner(model, input_size=args.input_size, torch_params=TorchBackendParams(backend="torch", compile=compile_net,
                                                                       max_batch=args.batch), device=args.device
                                ).device_path

    def like(compiled: bool) -> DeviceObjectDetector:
        return DeviceObjectDetector(path.runner, size=path.size, stride=path.stride, num_classes=path.num_classes,
                                    source_max_side=path.source_max_side,
                                    source_jpeg_quality=path.source_jpeg_quality, decision=path.decision,
                                    count_at=path.count_at, logit_clip=path.logit_clip, compile_treatment=compiled,
                                    treatment_dynamic=not args.static_treatment)

    det, comp = like(False), like(True)
    sources = sample_images(args.samples)
    machine = describe_machine(args.device)
    lines = ["# default-gpu's object decision, step by step on the device", "",
             f"- Command: `python {' '.join(['benchmarks/gpu_stage_profile.py'] + (argv or sys.argv[1:]))}`",
             f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
             f"- Runner: {'; '.join(path.runner.notes)}",
             f"- Detector input {path.size} px; as trained: shrink to {path.source_max_side} px, JPEG "
             f"q{path.source_jpeg_quality}; treatment compiled with "
             f"{'static' if args.static_treatment else 'dynamic'} shapes; inputs from {len(sources)} sample images"
             + ("" if sources else " (none found: smooth random colour fields)"),
             f"- Each step synchronised, min and median of {args.repeats} after one untimed call; images/s = batch "
             "/ min. Rows 'inputs()' and 'detect()' are whole; the others are parts of them.", ""]
    deadline = start + args.seconds
    for side in args.size or [224, 640]:
        lines += profile_size(side, args, det, comp, sources, sync, deadline)
    lines.append(f"Total run {time.perf_counter() - start:.0f} s (compiles included).")
    text = "\n".join(lines) + "\n"
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
