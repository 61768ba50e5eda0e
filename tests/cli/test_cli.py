"""The command line on a tiny real ONNX model and a synthetic labelled manifest."""

import json

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from workzone.cli.main import app
from workzone.config.loader import load_pipeline_config

runner = CliRunner()


@pytest.fixture
def setup(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    lines = ["path,label,source,split"]
    for i in range(40):
        label = i % 2
        base = np.array([170, 90, 60]) if label else np.array([70, 90, 170])
        noise = rng.normal(0, 45, 3)
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        img = np.tile(arr, (48, 64, 1)).astype(np.uint8)
        name = f"img{i}.png"
        PILImage.fromarray(img).save(tmp_path / name)
        lines.append(f"{name},{label},{'a' if i < 20 else 'b'},dev")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    pipe = tmp_path / "p.yaml"
    pipe.write_text(f"""
name: tiny
tiers:
  - name: whole
    stages: [{{name: cls, kind: onnx_classifier, model: {tiny_model.name}}}]
  - name: tiles
    stages: [{{name: tiles, kind: onnx_classifier, model: {tiny_model.name}, tiles: 2}}]
""")
    return tmp_path, pipe


def test_detect_prints_json_lines(setup):
    tmp, pipe = setup
    res = runner.invoke(app, ["detect", str(tmp / "img1.png"), str(tmp / "img2.png"), "-p", str(pipe), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.output.strip().splitlines()]
    assert len(rows) == 2
    assert rows[0]["label"] is True and rows[1]["label"] is False
    assert 0 <= rows[0]["probability"] <= 1 and rows[0]["stages"][0]["stage"] == "cls"


def test_detect_reports_bad_images_and_exits_2(setup):
    tmp, pipe = setup
    (tmp / "bad.jpg").write_bytes(b"nope")
    res = runner.invoke(app, ["detect", str(tmp / "bad.jpg"), str(tmp / "img1.png"), "-p", str(pipe)])
    assert res.exit_code == 2
    assert "ROAD WORK" in res.output


def test_tune_then_eval(setup, tmp_path):
    tmp, pipe = setup
    out = tmp / "tuned.yaml"
    res = runner.invoke(app, ["tune", str(tmp / "manifest.csv"), "-p", str(pipe), "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg, _ = load_pipeline_config(out)
    assert cfg.tiers[0].fusion.fitted and cfg.tiers[0].fusion.weights["cls"] > 0
    assert set(cfg.tiers[1].fusion.weights) == {"cls", "tiles"}
    assert cfg.tuning["n"] == 40 and "contribution" in cfg.tuning
    assert cfg.tiers[0].stages[0].cost > 0  # measured cost written back
    report = tmp / "report.json"
    res = runner.invoke(app, ["eval", str(tmp / "manifest.csv"), "-p", str(out), "--out", str(report)])
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    assert rep["overall"]["n"] == 40
    assert rep["overall"]["mcc"] == pytest.approx(cfg.tuning["mcc"], abs=1e-6)
    assert set(rep["per_source"]) == {"a", "b"}
    assert abs(sum(rep["tier_exits"].values()) - 1.0) < 1e-9


def test_eval_on_missing_manifest_fails_cleanly(tmp_path):
    from workzone.cli.main import main
    import sys

    argv = sys.argv
    sys.argv = ["workzone", "eval", str(tmp_path / "none.csv")]
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = argv
    assert info.value.code == 1


def test_tune_balanced_records_it_and_changes_the_bias(setup, tmp_path):
    tmp, pipe = setup
    # An imbalanced copy of the manifest (all negatives, a quarter of the positives): balancing matters.
    lines = (tmp / "manifest.csv").read_text().splitlines()
    keep = [lines[0]] + [ln for k, ln in enumerate(lines[1:]) if ln.split(",")[1] == "0" or k % 8 == 1]
    (tmp / "imbalanced.csv").write_text("\n".join(keep) + "\n")
    plain, bal = tmp / "plain.yaml", tmp / "bal.yaml"
    for out, extra in ((plain, []), (bal, ["--balanced"])):
        res = runner.invoke(app, ["tune", str(tmp / "imbalanced.csv"), "-p", str(pipe), "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
    cfg_p, _ = load_pipeline_config(plain)
    cfg_b, _ = load_pipeline_config(bal)
    assert cfg_p.tuning["balanced"] is False and cfg_b.tuning["balanced"] is True
    assert cfg_b.tiers[0].fusion.bias != pytest.approx(cfg_p.tiers[0].fusion.bias, abs=1e-4)


def test_tune_over_budget_is_a_clear_error(setup, tmp_path):
    tmp, pipe = setup
    res = runner.invoke(app, ["tune", str(tmp / "manifest.csv"), "-p", str(pipe), "--out", str(tmp / "x.yaml"),
                              "--max-cost", "0.000001"])
    from workzone.errors import ConfigError

    assert res.exit_code != 0
    assert isinstance(res.exception, ConfigError)  # the CLI's main() prints WorkzoneErrors without a traceback
    assert "max_cost" in str(res.exception) and "--max-cost" in str(res.exception)


def test_eval_prints_undefined_mcc_for_a_one_class_source(setup):
    tmp, pipe = setup
    lines = (tmp / "manifest.csv").read_text().splitlines()
    # Source "neg" holds only images without road work.
    rows = [ln if ln.split(",")[1] == "1" else ln.replace(",a,", ",neg,").replace(",b,", ",neg,") for ln in lines[1:]]
    (tmp / "one_class.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    res = runner.invoke(app, ["eval", str(tmp / "one_class.csv"), "-p", str(pipe)])
    assert res.exit_code == 0, res.output
    neg_row = next(ln for ln in res.output.splitlines() if "│ neg" in ln)
    assert neg_row.split("│")[3].strip() == "-"  # the MCC column
    assert "neg: only images without road work, so MCC is undefined (-); its score is specificity" in res.output


def test_version_prints_the_package_version():
    from typer.testing import CliRunner

    import workzone
    from workzone.cli.main import app

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"workzone {workzone.__version__}"
