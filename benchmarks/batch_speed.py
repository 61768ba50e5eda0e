"""Throughput of `workzone batch` on this machine: vs `detect`, on one core, on Ray, and on video.

Usage:
    python benchmarks/batch_speed.py [--limit 300] [--out benchmarks/results/batch_speed.md]

Every run is a fresh `workzone` subprocess over the same folder of real images (the dev split of
../shared/data/roadwork-v1, linked into a temporary folder), timed end to end, and again on one
image to measure start-up (interpreter, pipeline load, Ray start); steady-state images/s is
(N - 1) / (wall(N) - wall(1)). The video run encodes dev CamVid frames into a 2 fps clip (written
to a temporary folder, never kept) and samples every frame. Writes a Markdown results file that
describes the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # this checkout's workzone, in this process and (PYTHONPATH) in the runs
from _machine import describe_machine  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "roadwork-v1"


def _cli(*args: str, prefix: tuple[str, ...] = ()) -> tuple[float, float]:
    """Run ``workzone ARGS``; return (wall s, CPU s of the command and its child processes)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run([*prefix, sys.executable, "-m", "workzone.cli.main", *args], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode not in (0, 2):
        raise SystemExit(f"{args[0]} failed:\n{res.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _measure(name: str, folder: Path, one: Path, n: int, work: Path, make_args, prefix=()) -> dict:
    full, cpu_full = _cli(*make_args(folder, work / f"{name}-n"), prefix=prefix)
    single, cpu_single = _cli(*make_args(one, work / f"{name}-1"), prefix=prefix)
    # Ray's workers are children of its raylet, not of the command: their CPU time is not counted.
    per_core = None if "ray" in name else (n - 1) / max(cpu_full - cpu_single, 1e-9)
    row = {"name": name, "n": n, "wall": full, "startup": single, "per_core": per_core,
           "e2e": n / full, "steady": (n - 1) / max(full - single, 1e-9)}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--video-frames", type=int, default=120)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "batch_speed.md"))
    args = ap.parse_args()
    with (DATA / "manifest.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "dev"][: args.limit]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder, one = work / "images", work / "one"
        folder.mkdir()
        one.mkdir()
        for k, r in enumerate(rows):
            (folder / f"{k:05d}{Path(r['path']).suffix}").symlink_to(DATA / r["path"])
        (one / "00000.jpg").symlink_to(DATA / rows[0]["path"])
        n = len(rows)

        def batch_args(*extra):
            return lambda src, out: ["batch", str(src), "--out", f"{out}.parquet", "--batch-size", "16", *extra]

        results = [
            _measure("detect --json (batch size 8, its default)", folder, one, n, work,
                     lambda src, out: ["detect", str(src), "--json"]),
            _measure("detect --json --batch-size 16", folder, one, n, work,
                     lambda src, out: ["detect", str(src), "--json", "--batch-size", "16"]),
            _measure("batch, local engine, 2 decode threads", folder, one, n, work, batch_args()),
            _measure("batch, local engine, one core (taskset -c 0), 1 decode thread", folder, one, n, work,
                     batch_args("--decode-workers", "1"), prefix=("taskset", "-c", "0")),
        ]
        try:
            import ray  # noqa: F401

            for w in (1, 2):
                results.append(_measure(f"batch --engine ray, {w} cascade actor(s), local Ray with {w + 1} CPUs",
                                        folder, one, n, work,
                                        batch_args("--engine", "ray", "--ray-workers", str(w), "--ray-cpus", str(w + 1))))
        except ImportError:
            print("ray is not installed: skipping the Ray rows", file=sys.stderr)

        from tests.video._clips import camvid_frames, write_clip

        frames = camvid_frames(DATA, args.video_frames)
        clip = write_clip(work / "clip.mp4", frames, fps=2)
        clip_one = write_clip(work / "clip1.mp4", frames[:1], fps=2)
        v_full, v_cpu = _cli("batch", str(clip), "--out", str(work / "v.parquet"), "--fps", "2")
        v_one, v_cpu_one = _cli("batch", str(clip_one), "--out", str(work / "v1.parquet"), "--fps", "2")
        from workzone.video.frames import iter_video_frames

        t0 = time.perf_counter()
        decoded = sum(1 for _ in iter_video_frames(clip, 2.0))
        decode_fps = decoded / (time.perf_counter() - t0)
    load_after = os.getloadavg()

    nf = len(frames)
    lines = [
        "# Batch throughput: `workzone batch` vs `detect`, one core, Ray, video",
        "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {describe_machine()}",
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}. The machine is **shared** "
        "with other engineers' jobs while this ran, so rates are lower bounds and vary run to run.",
        f"- data: {n} images of split `dev` of `roadwork-v1` (JPEG files, decoded inside each run), pipeline `default`",
        f"- command: `python benchmarks/batch_speed.py --limit {args.limit} --video-frames {args.video_frames}`",
        "- every row is a fresh subprocess; start-up = the same command on 1 image (interpreter, pipeline load, Ray start); "
        "steady state = (N - 1) / (wall(N) - wall(1)); images per CPU-second = (N - 1) / (CPU(N) - CPU(1)), the "
        "CPU time (user + system) of the command and its children: what one fully used core does; less sensitive "
        "to other jobs than wall time, though on an oversubscribed machine onnxruntime's spinning threads and cache "
        "misses inflate it (a pessimistic bound)",
        "",
        "| run | N | wall s | start-up s | images/s end to end | images/s steady state | images per CPU-second |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        pc = "n/a (Ray workers)" if r["per_core"] is None else f"{r['per_core']:.1f}"
        lines.append(f"| {r['name']} | {r['n']} | {r['wall']:.1f} | {r['startup']:.1f} | {r['e2e']:.1f} "
                     f"| {r['steady']:.1f} | {pc} |")
    lines += [
        "",
        "| video (CamVid dev frames encoded as a 2 fps MPEG-4 clip, sampled at 2 fps) | value |",
        "| --- | --- |",
        f"| frames | {nf} |",
        f"| wall s, end to end (decode + cascade + results + segments) | {v_full:.1f} |",
        f"| start-up s (1-frame clip) | {v_one:.1f} |",
        f"| frames/s end to end | {nf / v_full:.1f} |",
        f"| frames/s steady state | {(nf - 1) / max(v_full - v_one, 1e-9):.1f} |",
        f"| frames per CPU-second | {(nf - 1) / max(v_cpu - v_cpu_one, 1e-9):.1f} |",
        f"| decode only (PyAV, 480x272, this process) frames/s | {decode_fps:.0f} |",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
