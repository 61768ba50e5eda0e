"""``workzone bench``: images/s from JPEG bytes and per-stage latency, on the CPU or a GPU."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer


def bench(
    device: Annotated[str, typer.Option(help="cpu, or cuda / cuda:N for the torch GPU path")] = "cpu",
    sizes: Annotated[List[int], typer.Option("--size", help="square JPEG side(s) in px (224 = the subnet's input)")] = [224, 640],  # noqa: B006
    quality: Annotated[int, typer.Option(help="JPEG quality of the synthesised inputs")] = 75,
    images: Annotated[int, typer.Option(help="distinct JPEGs synthesised per size")] = 256,
    batch: Annotated[Optional[int], typer.Option(help="images per batch (default: 16 on CPU, 1024 on GPU)")] = None,
    cascade_batch: Annotated[Optional[int], typer.Option(help="images per cascade batch (default: 16 CPU, 512 GPU)")] = None,
    seconds: Annotated[float, typer.Option(help="timed seconds per run (after a warm-up batch)")] = 5.0,
    pipeline: Annotated[List[str], typer.Option("--pipeline", "-p", help="pipeline(s) to time from bytes")] = ["default"],  # noqa: B006
    model: Annotated[str, typer.Option(help="tier-1 classifier ONNX file")] = "builtin:roadwork_lite0.onnx",
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the GPU classifier")] = True,
    cpu_share: Annotated[List[float], typer.Option("--cpu-share", help="GPU: share of JPEGs decoded by libjpeg on CPU "
                                                   "threads alongside nvJPEG (repeat to compare; 1 = the CPU "
                                                   "path's exact pixels)")] = [0.0],  # noqa: B006
    undecided: Annotated[float, typer.Option(help="share of images tier 1 leaves undecided, for the estimated "
                                             "cascade rate (0.30 on the dev split)")] = 0.30,
    http_rate: Annotated[List[float], typer.Option(help="also time HTTP /v1/detect at this many requests/s on loopback "
                                                   "(repeat for several; then the highest rate with p99 <= "
                                                   "--http-p99-ms is searched; needs the serve extra)")] = [],  # noqa: B006
    http_seconds: Annotated[float, typer.Option(help="seconds of HTTP load per rate")] = 10.0,
    http_p99_ms: Annotated[float, typer.Option(help="p99 bound of the highest-rate search")] = 100.0,
    http_addresses: Annotated[int, typer.Option(min=1, max=60000, help="loopback source addresses the HTTP load "
                                                "comes from (127.0.0.1, .2, ...), as many clients call a deployment; "
                                                "1: one client, whom the per-client limits apply to")] = 64,
    http_clients: Annotated[int, typer.Option(min=1, max=64, help="processes the HTTP load is sent from (one Python "
                                              "process tops out at a few thousand requests a second)")] = 1,
    http_server_log: Annotated[Optional[Path], typer.Option(help="keep the HTTP rows' server log (stderr) in this "
                                                            "file")] = None,
    tier1: Annotated[bool, typer.Option("--tier1/--no-tier1", help="also time the --model classifier alone "
                                        "(the old tier 1)")] = True,
    data: Annotated[Optional[Path], typer.Option(help="also time real JPEGs: a manifest folder (its dev split, "
                                                 "--images of them)")] = None,
    parity_data: Annotated[Optional[Path], typer.Option(help="first, compare the torch object path with onnxruntime "
                                                        "on this manifest folder's dev images")] = None,
    repeats: Annotated[int, typer.Option(help="run each timing this many times and keep the fastest (a shared, "
                                         "loaded machine slows runs, never speeds them)")] = 1,
    all_tiers: Annotated[bool, typer.Option("--all-tiers/--no-all-tiers", help="also time the first pipeline with "
                                            "every tier on every image")] = True,
    samples: Annotated[Path, typer.Option(help="folder of images the inputs are cropped from")] = Path("samples"),
    out: Annotated[Optional[Path], typer.Option(help="results file (.md; a .json is written beside it)")] = None,
) -> None:
    """Time the cascade from JPEG bytes (decode included) at 224 px and 640 px, and write a results file."""
    from workzone.throughput import runs
    from workzone.throughput.inputs import sample_images, synth_jpegs
    from workzone.throughput.machine import describe_machine
    from workzone.throughput.parity import OPERATOR_SCHEME
    from workzone.throughput.results import write_results
    from workzone.cli._common import make_console
    from workzone.stages.base import StageContext

    console = make_console()
    cuda = device.startswith("cuda")
    if cuda:
        from workzone._optional import require

        torch = require("torch", "gpu", "workzone bench --device cuda")
        if not torch.cuda.is_available():
            raise typer.BadParameter("torch sees no CUDA device; run with --device cpu", param_hint="--device")
    batch = batch or (1024 if cuda else 16)
    cascade_batch = cascade_batch or (512 if cuda else 16)
    images = max(images, batch, cascade_batch)  # at least one full batch of distinct inputs
    model_path = str(StageContext().resolve(model))
    sources = sample_images(samples)
    rows: list = []
    out = out or Path("benchmarks/results") / f"bench_{'gpu' if cuda else 'cpu'}.md"
    command = "workzone bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])

    def add(make: Any, *args: Any, timed: bool = True, **kwargs: Any) -> None:
        # One failed run must not lose the others (the GPU run is a single, budgeted call).
        made: list = []
        for _ in range(repeats if timed else 1):
            try:
                got = make(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - recorded in the results file, with its type
                import traceback

                traceback.print_exc()
                size = args[1] if len(args) > 1 and isinstance(args[1], str) else "-"
                got = runs.Row(f"{getattr(make, '__name__', make)} FAILED", device, size, 0, 0, 0.0, float("nan"),
                               float("nan"), notes=f"{type(exc).__name__}: {str(exc)[:300]}")
            made.append(got)
        if isinstance(made[0], list):
            new = made[0]
        else:
            new = [max(made, key=lambda r: r.images_per_s)]
            if len(made) > 1:
                new[0].notes = (new[0].notes + "; " if new[0].notes else "") + f"fastest of {len(made)}: " + \
                    ", ".join(f"{r.images_per_s:,.1f}" for r in made) + " images/s"
        for row in new:
            rows.append(row)
            console.print(f"{row.name:48s} {row.device:7s} {row.size:16s} batch {row.batch:5d}: "
                          f"{row.images_per_s:10,.0f} images/s  ({row.notes})")
        # Written after every run, so a run cut short by a time limit still leaves its results.
        write_results(rows, describe_machine(device), out, command=command)

    if parity_data is not None:
        for share in cpu_share if cuda else [0.0]:
            add(runs.object_parity_row, str(parity_data), device=device, cpu_share=share, timed=False)
    inputs = [(f"{side}x{side} JPEG q{quality}", synth_jpegs(images, (side, side), quality=quality, sources=sources))
              for side in sizes]
    if data is not None:
        from workzone.throughput.parity import dev_jpegs

        inputs.append((f"{data.name} dev JPEGs", [b for _, b in dev_jpegs(data)[:images]]))
    for k_in, (label, blobs) in enumerate(inputs):
        if cuda:
            for share in cpu_share:
                add(runs.decode_device, blobs, label, device=device, batch=batch, seconds=seconds, cpu_share=share)
            if tier1:
                add(runs.tier1_from_bytes, blobs, label, model_path, device=device, batch=batch, seconds=seconds,
                    compile=compile, cpu_share=cpu_share[0])
                if k_in == 0:
                    add(runs.precision_check, blobs, label, model_path, device=device, timed=False)
        else:
            add(runs.decode_cpu, blobs, label, batch=batch, seconds=seconds)
            if tier1:
                add(runs.onnx_classifier_from_bytes, blobs, label, model_path, batch=batch, seconds=seconds)
            if _has_kind(pipeline[0], "roadwork_detector"):
                # The floors of the ratio: the first pipeline's own sessions alone on ready inputs, as it runs them
                # and as they ran before issue 23; with the verifier too when it has one.
                for scheme in (None, OPERATOR_SCHEME):
                    add(runs.sessions_only, blobs, label, pipeline[0], batch=cascade_batch, seconds=seconds,
                        verifier=False, scheme=scheme)
                if _has_kind(pipeline[0], "object_verifier"):
                    add(runs.sessions_only, blobs, label, pipeline[0], batch=cascade_batch, seconds=seconds,
                        verifier=True)
        if http_rate and k_in == 0:
            # Before the in-process pipeline runs: their torch.compile must not eat the time budget of this row.
            from workzone.throughput.http import http_sweep

            add(http_sweep, blobs, label, pipeline=pipeline[0], device=device, rates=http_rate, seconds=http_seconds,
                p99_limit_ms=http_p99_ms, addresses=http_addresses, server_log=http_server_log, clients=http_clients,
                timed=False)
        for k, name in enumerate(pipeline):
            # The first pipeline is also timed with every tier on every image (the synthesised
            # inputs are easy: few leave tier 1 undecided), from which the estimate row is derived.
            for run_all in (False, True) if k == 0 and all_tiers else (False,):
                for share in cpu_share if cuda else [0.0]:
                    add(runs.cascade_from_bytes, blobs, label, name, device=device, batch=cascade_batch,
                        seconds=seconds, compile=compile and cuda, run_all=run_all, cpu_share=share)
    if cuda and tier1:
        add(runs.model_only, model_path, device=device, batch=batch, seconds=seconds, compile=compile)
    add_estimates(rows, undecided)
    add_session_ratios(rows)
    md, js = write_results(rows, describe_machine(device), out, command=command)
    console.print(f"wrote {md} and {js}")


def add_session_ratios(rows: list) -> None:
    """Note on each CPU pipeline row how many times slower it is than the bare sessions on the same inputs in the
    same run: the detector session alone (the issue's bound: 1.3), and the detector and verifier sessions (what is
    left is the cascade's own work: decoding, the as-trained copy, crops, sign OCR, fusion)."""
    floors = (("object detector, bare onnxruntime session", "bare detector session's", " (the scheme before"),
              ("object detector + verifier, bare", "bare detector + verifier sessions'", None))
    for r in rows:
        if r.device != "cpu" or not r.name.startswith("pipeline ") or not r.images_per_s:
            continue
        for prefix, what, unless in floors:
            bare = next((b for b in rows if b.name.startswith(prefix) and b.size == r.size and b.images_per_s
                         and not (unless and unless in b.notes)), None)
            if bare is not None:
                r.notes = (r.notes + "; " if r.notes else "") + \
                    f"{bare.images_per_s / r.images_per_s:.2f}x the {what} time per image"


def _has_kind(pipeline: str, kind: str) -> bool:
    from workzone.config.loader import load_pipeline_config

    cfg, _ = load_pipeline_config(pipeline)
    return any(s.kind == kind for t in cfg.tiers for s in t.stages)


def add_estimates(rows: list, undecided: float) -> None:
    """Append, per pipeline and input, the rate at ``undecided`` past tier 1, from the timed runs.

    Per image, the early-exit run costs ``t1 + past * t2`` (``past``: its measured share past tier 1)
    and the run-all run ``t1 + t2``; solving the two for ``t1`` and ``t2`` gives the rate
    ``1 / (t1 + undecided * t2)``, from wall time and (where measured) from CPU time.
    """
    from workzone.throughput.runs import Row

    for r in list(rows):
        if not r.name.endswith("every tier on every image"):
            continue
        base = r.name.removesuffix(", every tier on every image")
        early = next((e for e in rows if e.name == base and e.size == r.size and e.device == r.device), None)
        if early is None or not early.images_per_s or not r.images_per_s:
            continue
        past = float(early.notes.split("%", 1)[0]) / 100.0
        if past >= 0.999:
            continue
        wall = _estimate(1.0 / early.images_per_s, 1.0 / r.images_per_s, past, undecided)
        cpu = None
        if early.cpu_s and r.cpu_s:
            cpu = _estimate(1.0 / early.images_per_cpu_s, 1.0 / r.images_per_cpu_s, past, undecided)
        t1, t2, est = wall
        images = int(round(est * 1000))
        rows.append(Row(base + f", estimated at {undecided:.0%} past tier 1", r.device, r.size, r.batch, images, 1000.0,
                        float("nan"), float("nan"), cpu_s=images / cpu[2] if cpu else 0.0,
                        notes=f"derived from the two rows above: tier 1 {t1 * 1e3:.3f} ms/image, tier 2 "
                              f"{t2 * 1e3:.3f} ms/image (wall)"))


def _estimate(t_early: float, t_all: float, past: float, undecided: float) -> tuple[float, float, float]:
    # t_early = t1 + past * t2 and t_all = t1 + t2 give t2 = (t_all - t_early) / (1 - past).
    t2 = max(0.0, (t_all - t_early) / (1.0 - past))
    t1 = max(1e-12, t_all - t2)
    return t1, t2, 1.0 / (t1 + undecided * t2)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
