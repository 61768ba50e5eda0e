"""``workzone batch`` through the CLI on a tiny real ONNX pipeline."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image as PILImage
from typer.testing import CliRunner

from workzone.cli.main import app

runner = CliRunner()


def _pipeline(tmp_path, tiny_model):
    p = tmp_path / "p.yaml"
    p.write_text(f"name: tiny\ntiers:\n  - name: whole\n    stages: [{{name: cls, kind: onnx_classifier, model: {tiny_model.name}}}]\n")
    return p


def test_batch_writes_one_row_per_image_and_a_summary(tmp_path, tiny_model) -> None:
    for i, rgb in enumerate([(200, 40, 40), (40, 40, 200), (120, 120, 120)]):
        PILImage.fromarray(np.full((40, 48, 3), rgb, np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    out = tmp_path / "r.jsonl"
    res = runner.invoke(app, ["batch", str(tmp_path), "--out", str(out), "-p", str(_pipeline(tmp_path, tiny_model))])
    assert res.exit_code == 0, res.output
    assert "4 inputs, 4 rows (4 new this run, 1 errors)" in res.output
    rows = {r["path"].rsplit("/", 1)[1]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["im0.png"]["label"] is True and rows["im1.png"]["label"] is False
    assert json.loads(rows["im0.png"]["stage_scores"])["cls"] > 0.9
    assert rows["bad.png"]["error"] and rows["bad.png"]["probability"] is None


def test_batch_rejects_an_unknown_engine(tmp_path, tiny_model) -> None:
    res = runner.invoke(app, ["batch", str(tmp_path), "--out", str(tmp_path / "r.jsonl"), "--engine", "spark"])
    assert res.exit_code != 0
    assert "expected local or ray" in str(res.exception)


def test_detect_points_videos_to_batch(tmp_path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"\x00")
    res = runner.invoke(app, ["detect", str(tmp_path / "clip.mp4")])
    assert res.exit_code != 0 and "workzone batch" in str(res.exception)
