"""Inputs for batch tests: a folder of real street images (the shipped samples, cropped many ways)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image as PILImage

REPO = Path(__file__).resolve().parents[2]
SAMPLES = [REPO / "samples" / "roadwork_cambridge_drawn.jpg", REPO / "samples" / "no_roadwork_cambridge.jpg"]


def make_image_folder(folder: Path, n: int) -> list[Path]:
    """``n`` distinct JPEGs (crops of the two samples) in ``folder``/day*/; returns their paths."""
    paths = []
    for i in range(n):
        im = PILImage.open(SAMPLES[i % 2]).convert("RGB")
        dx, dy = (i * 7) % 60, (i * 5) % 40
        crop = im.crop((dx, dy, im.width - 60 + dx, im.height - 40 + dy))
        p = folder / f"day{i % 3}" / f"img{i:03d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        crop.save(p, quality=90)
        paths.append(p)
    return paths


def batch_command(*args: str) -> list[str]:
    """The ``workzone batch`` command line run as a real subprocess of this interpreter."""
    return [sys.executable, "-m", "workzone.cli.main", "batch", *args]


def subprocess_env() -> dict[str, str]:
    """The environment for a subprocess that imports this checkout's workzone."""
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_batch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(batch_command(*args), env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def comparable(row: dict) -> dict:
    """A row without its latency (wall time differs between runs), scores rounded to 5 decimals.

    Batches are cut differently after a kill, and onnxruntime may differ in the last float bits
    between batch compositions.
    """
    out = {k: v for k, v in row.items() if k != "latency_ms"}
    if out.get("probability") is not None:
        out["probability"] = round(out["probability"], 5)
    scores = json.loads(out["stage_scores"])
    out["stage_scores"] = {k: None if v is None else round(v, 5) for k, v in scores.items()}
    return out
