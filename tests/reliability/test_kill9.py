"""``kill -9`` in the middle of writing results or data, then a rerun: the output is complete and
valid, with no empty, truncated or duplicated file or row (writes go through workzone.io.atomic)."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image as PILImage

from tests.reliability.corpus import _scene
from workzone.io.atomic import PARTIAL_SUFFIX, is_complete_jpeg

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 40


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "workzone.cli.main", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kill9-data")
    rows = []
    for k in range(N_IMAGES):
        rel = f"images/s{k % 3}/img{k:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(_scene(160, 120, k)).resize((1600, 1200)).save(root / rel, "JPEG", quality=92)
        rows.append({"path": rel, "label": k % 2, "source": f"s{k % 3}", "split": "dev"})
    with (root / "manifest.csv").open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return root / "manifest.csv"


def _kill_when(proc: subprocess.Popen, ready, rng: random.Random, timeout: float = 60.0) -> bool:
    """kill -9 ``proc`` a random moment after ``ready()`` turns true; False if it finished first."""
    end = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.3))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_compact_data_killed_mid_run_is_completed_by_a_rerun(dataset: Path, tmp_path: Path):
    out = tmp_path / "compact"
    rng = random.Random(12)
    kills = 0
    for _ in range(3):
        proc = _cli("train", "compact-data", str(dataset), "--out", str(out), "--max-side", "320")
        kills += _kill_when(proc, lambda: out.exists() and any(out.rglob("*.jpg")), rng)
    assert kills >= 1
    # What a kill leaves: whole files, and at most one temporary per killed writer, never a torn JPEG.
    assert all(is_complete_jpeg(p) for p in out.rglob("*.jpg"))
    # A torn file left by an older, non-atomic writer is redone, not skipped.
    victim = next(out.rglob("*.jpg"))
    victim.write_bytes(b"")
    proc = _cli("train", "compact-data", str(dataset), "--out", str(out), "--max-side", "320")
    assert proc.wait(120) == 0, proc.stderr.read().decode()
    jpgs = sorted(out.rglob("*.jpg"))
    assert len(jpgs) == N_IMAGES and all(is_complete_jpeg(p) for p in jpgs)
    assert all(max(PILImage.open(p).size) == 320 for p in jpgs)
    assert not list(out.rglob(f"*{PARTIAL_SUFFIX}"))
    assert (out / "manifest.csv").read_bytes() == dataset.read_bytes()


def test_eval_out_killed_mid_run_leaves_no_partial_report(dataset: Path, model_dir: Path, tmp_path: Path):
    pipeline = model_dir / "kill9.yaml"
    pipeline.write_text("name: kill9\ntiers:\n  - name: fast\n    stages:\n"
                        "      - {name: clf, kind: onnx_classifier, model: tiny.onnx, threads: 1}\n")
    report = tmp_path / "report.json"
    report.write_text('{"stale": true}')  # a previous run's report stays whole until the new one replaces it
    rng = random.Random(3)
    proc = _cli("eval", str(dataset), "-p", str(pipeline), "--out", str(report), "--batch-size", "2")
    _kill_when(proc, lambda: True, rng, timeout=5)
    assert json.loads(report.read_text()) == {"stale": True} or json.loads(report.read_text())["overall"]["n"] == N_IMAGES
    proc = _cli("eval", str(dataset), "-p", str(pipeline), "--out", str(report))
    assert proc.wait(120) == 0, proc.stderr.read().decode()
    data = json.loads(report.read_text())
    assert data["overall"]["n"] == N_IMAGES and not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}"))
