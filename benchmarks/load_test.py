"""Load test of ``workzone serve`` with locust: requests/s and latency at 1, 10 and 100 clients.

Usage:
    python benchmarks/load_test.py [--pipeline default] [--users 1 10 100] [--run-time 20]
        [--images ../shared/data/roadwork-v1] [--out benchmarks/results/load_test.md] [--stand-in]

The script starts ``workzone serve`` on 127.0.0.1 (a free port), waits for /readyz, then runs
locust headless once per client count (closed loop: each client sends its next image as soon as
the previous answer arrives), bounded by ``--run-time`` seconds and the client count. Only
loopback is ever targeted. Any failure other than an explicit 429/503 makes the script exit 1.

``--stand-in``: when the pipeline's model file is not there yet (the shipped
``roadwork_lite0.onnx`` is trained separately), serve a stand-in instead: the same
EfficientNet-Lite0 architecture at 224 px with random weights, exported to ONNX, as a one-tier
pipeline. Speed is then that of the tier-1 classifier alone; the results file says so.

This file is also the locustfile (locust imports it and uses :class:`DetectUser`).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_IMAGES_ENV = "WORKZONE_LOADTEST_IMAGES"  # file listing the image paths, one a line (driver -> locust)

# -- the locust side ---------------------------------------------------------------------------------
if os.environ.get(_IMAGES_ENV):
    from locust import HttpUser, constant, task

    _PAYLOADS = [Path(p).read_bytes() for p in Path(os.environ[_IMAGES_ENV]).read_text().split("\n") if p]

    class DetectUser(HttpUser):
        """One client: POST /v1/detect with raw JPEG bytes, back to back."""

        wait_time = constant(0)

        @task
        def detect(self) -> None:
            body = random.choice(_PAYLOADS)
            with self.client.post("/v1/detect", data=body, headers={"content-type": "image/jpeg"},
                                  name="/v1/detect", catch_response=True) as r:
                if r.status_code in (429, 503):
                    r.failure(f"refused {r.status_code}")  # counted, and allowed by the driver
                elif r.status_code != 200:
                    r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                elif not 0.0 <= r.json().get("probability", -1) <= 1.0:
                    r.failure("probability outside [0, 1]")


# -- the driver side ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stand_in_pipeline(folder: Path) -> Path:
    """EfficientNet-Lite0 (random init) -> ONNX, in a one-tier pipeline."""
    import json

    from workzone_train.export import export_onnx
    from workzone_train.model import build_model

    model = build_model("efficientnet_lite0", pretrained=False).eval()
    onnx_path = export_onnx(model, folder / "stand_in_lite0.onnx", size=224)
    onnx_path.with_suffix(".json").write_text(json.dumps({"input_size": 224, "resize": "squash"}))
    path = folder / "stand_in.yaml"
    path.write_text(
        "name: stand-in\n"
        "description: EfficientNet-Lite0 at 224 px with random weights (load-test stand-in for the default pipeline)\n"
        "deadline_s: 10\n"
        "tiers:\n"
        "  - name: classifier\n"
        "    stages:\n"
        "      - name: lite0\n"
        "        kind: onnx_classifier\n"
        "        model: stand_in_lite0.onnx\n"
    )
    return path


def _pick_images(folder: Path, n: int = 32) -> list[Path]:
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        with manifest.open() as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("split") == "dev" and r["path"].lower().endswith(".jpg")]
        paths = [folder / r["path"] for r in rows]
    else:
        paths = sorted(folder.rglob("*.jpg"))
    random.Random(0).shuffle(paths)
    return [p for p in paths if p.is_file()][:n]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def _run_locust(url: str, users: int, run_time: int, images_file: Path, prefix: Path) -> dict:
    cmd = [sys.executable, "-m", "locust", "-f", str(Path(__file__).resolve()), "--headless", "--only-summary",
           "-u", str(users), "-r", str(users), "--run-time", f"{run_time}s", "--stop-timeout", "10",
           "--host", url, "--csv", str(prefix), "--exit-code-on-error", "0", "--loglevel", "WARNING"]
    subprocess.run(cmd, check=True, env={**os.environ, _IMAGES_ENV: str(images_file)},
                   timeout=run_time + 120, stdout=subprocess.DEVNULL)
    with open(f"{prefix}_stats.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["Name"] == "/v1/detect")
    with open(f"{prefix}_failures.csv") as fh:
        failures = [(r["Error"], int(r["Occurrences"])) for r in csv.DictReader(fh)]
    return {"users": users, "requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
            "rps": float(row["Requests/s"]), "p50": row["50%"], "p90": row["90%"], "p95": row["95%"],
            "p99": row["99%"], "max": row["Max Response Time"], "failure_kinds": failures}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="default")
    ap.add_argument("--users", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--run-time", type=int, default=20, help="seconds per client count")
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "roadwork-v1"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load_test.md"))
    ap.add_argument("--stand-in", action="store_true", help="serve a random-init Lite0 if the pipeline cannot load")
    ap.add_argument("--server-args", default="", help="extra flags for workzone serve, e.g. '--batch-size 8'")
    args = ap.parse_args()
    if max(args.users) > 200 or args.run_time > 120:
        raise SystemExit("bounded test: at most 200 clients and 120 s per step")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import describe_machine

    from workzone.config.loader import load_pipeline_config
    from workzone.errors import WorkzoneError

    work = Path(tempfile.mkdtemp(prefix="workzone-load-"))
    pipeline, note = args.pipeline, ""
    try:
        cfg, path = load_pipeline_config(pipeline)
        missing = [s.name for t in cfg.tiers for s in t.stages if hasattr(s.params, "model")
                   and str(s.params.model).startswith("builtin:")
                   and not (ROOT / "src/workzone/models" / str(s.params.model).removeprefix("builtin:")).is_file()]
        if missing:
            raise WorkzoneError(f"model file(s) of stage(s) {missing} are not shipped yet")
    except WorkzoneError as exc:
        if not args.stand_in:
            raise SystemExit(f"cannot serve pipeline {pipeline!r}: {exc} (use --stand-in)")
        note = f"pipeline {pipeline!r} could not be served ({exc}); a stand-in was used: "
        pipeline = str(_stand_in_pipeline(work))
        note += "EfficientNet-Lite0, 224 px, random weights, exported to ONNX, as the only tier."
    images = _pick_images(Path(args.images))
    if not images:
        raise SystemExit(f"no JPEG images under {args.images}")
    images_file = work / "images.txt"
    images_file.write_text("\n".join(str(p) for p in images))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "workzone.cli.main", "serve", "--pipeline", pipeline,
                               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                               *args.server_args.split()], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    results = []
    load_before = os.getloadavg()
    try:
        _wait_ready(url, server)
        for users in args.users:
            print(f"{users} client(s), {args.run_time} s ...", flush=True)
            results.append(_run_locust(url, users, args.run_time, images_file, work / f"u{users}"))
            r = results[-1]
            print(f"  {r['rps']:.1f} req/s, p50 {r['p50']} ms, p99 {r['p99']} ms, failures {r['failures']}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    sizes = [p.stat().st_size for p in images]
    machine = f"{describe_machine()}; load average before the run {load_before[0]:.2f} (the machine is shared)"
    _write_report(Path(args.out), results, machine, pipeline if not note else "stand-in", note,
                  len(images), sum(sizes) / len(sizes), args)
    bad = [(r["users"], e) for r in results for e, _ in r["failure_kinds"] if "refused 429" not in e
           and "refused 503" not in e]
    if bad:
        raise SystemExit(f"errors other than 429/503: {bad}")


def _write_report(out: Path, results: list[dict], machine: str, pipeline: str, note: str, n_images: int,
                  mean_bytes: float, args: argparse.Namespace) -> None:
    lines = [
        "# Load test: `workzone serve`",
        "",
        f"Run {dt.datetime.now().isoformat(timespec='minutes')} with `python benchmarks/load_test.py "
        f"--pipeline {args.pipeline} --run-time {args.run_time}{' --stand-in' if args.stand_in else ''}"
        f"{' --server-args ' + repr(args.server_args) if args.server_args else ''}`.",
        "",
        f"- Machine: {machine}. Server and locust share these cores.",
        f"- Pipeline: {pipeline}. {note}".rstrip(),
        f"- Requests: `POST /v1/detect`, raw JPEG bodies, {n_images} dev-split images of roadwork-v1 "
        f"(mean {mean_bytes / 1024:.0f} KiB), closed loop (no think time), loopback only.",
        f"- Server: default settings (batch size 16, adaptive wait up to 5 ms, queue 256){' plus ' + args.server_args if args.server_args else ''}.",
        "",
        "| clients | requests | req/s | p50 ms | p90 ms | p95 ms | p99 ms | max ms | failures |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--|",
    ]
    for r in results:
        kinds = ", ".join(f"{e} x{n}" for e, n in r["failure_kinds"]) or "none"
        lines.append(f"| {r['users']} | {r['requests']} | {r['rps']:.1f} | {r['p50']} | {r['p90']} | {r['p95']} | "
                     f"{r['p99']} | {float(r['max']):.0f} | {kinds} |")
    lines += ["", "Latency is client-side (locust), so it includes queueing in the server's micro-batcher; "
              "more clients give the micro-batcher fuller batches (higher req/s on the same cores) at the cost of "
              "queueing latency. Numbers on this shared 2-core machine move with the other load on it.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
