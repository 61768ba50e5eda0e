"""One error contract: every bad input, whatever the entry point, is an InvalidImageError (HTTP 422,
CLI exit 2 with a one-line reason, miner -1.0), never a TypeError, ValueError or OSError."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.reliability.corpus import load_seeds, progressive_scan_bomb
from workzone.errors import InvalidImageError
from workzone.io.images import decode_image

ROOT = Path(__file__).resolve().parents[2]


def _closed() -> PILImage.Image:
    im = PILImage.new("RGB", (32, 32))
    im.close()
    return im


def _lazy_truncated() -> PILImage.Image:
    raw = load_seeds()["rgb.png"]
    return PILImage.open(io.BytesIO(raw[: len(raw) // 2]))


def _mutated_tiff() -> bytes:
    raw = bytearray(load_seeds()["rgb_deflate.tif"])
    raw[8:12] = b"\xff\xff\x00\x00"  # an IFD entry count that runs past the file
    return bytes(raw)


BAD_INPUTS = {
    "object array": lambda: np.array([[object()] * 20] * 20),
    "str array": lambda: np.full((20, 20), "a"),
    "datetime array": lambda: np.full((20, 20), np.datetime64("2020-01-01")),
    "structured array": lambda: np.zeros((20, 20), dtype=[("a", "u1"), ("b", "f4")]),
    "complex array": lambda: np.zeros((20, 20, 3), complex),
    "NaN array": lambda: np.full((20, 20, 3), np.nan, np.float32),
    "5-D array": lambda: np.zeros((2, 2, 2, 2, 2), np.uint8),
    "closed PIL image": _closed,
    "truncated lazily opened PIL image": _lazy_truncated,
    "mutated TIFF": _mutated_tiff,
    "/proc/self/mem": lambda: "/proc/self/mem",
    "a directory": lambda: str(ROOT),
    "path with NUL": lambda: "abc\x00.jpg",
    "None": lambda: None,
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_an_invalid_image_error(name):
    with pytest.raises(InvalidImageError) as info:
        decode_image(BAD_INPUTS[name]())
    assert len(str(info.value)) < 400


def test_la_mode_image_decodes():
    la = PILImage.new("LA", (32, 32), (200, 128)).convert("La")
    assert decode_image(la).pixels.shape == (32, 32, 3)


def test_cli_detect_skips_bad_inputs_with_one_line_each(tmp_path: Path, model_dir: Path):
    pipeline = model_dir / "cli.yaml"
    pipeline.write_text("name: cli\ntiers:\n  - name: fast\n    stages:\n"
                        "      - {name: clf, kind: onnx_classifier, model: tiny.onnx, threads: 1}\n")
    (tmp_path / "bomb.jpg").write_bytes(progressive_scan_bomb())
    (tmp_path / "torn.png").write_bytes(load_seeds()["rgb.png"][:300])
    (tmp_path / "good.jpg").write_bytes(load_seeds()["baseline.jpg"])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-m", "workzone.cli.main", "detect", str(tmp_path), "-p", str(pipeline),
                          "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and sum("error" in row for row in rows) == 2
    assert all(len(row["error"]) < 400 for row in rows if "error" in row)
