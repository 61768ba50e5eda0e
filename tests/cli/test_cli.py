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


def _scores_csv(path, n=60, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["key,label,source,condition,fold,cls,tiles"]
    for i in range(n):
        y = i % 2
        lines.append(f"k{i},{y},s{i % 3},day,s{i % 3},{(2 * y - 1) * 1.5 + rng.normal():.4f},{(2 * y - 1) + rng.normal():.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tune_on_out_of_fold_scores_with_stored_costs_is_deterministic(setup, tmp_path):
    tmp, pipe = setup
    # Stored costs: the same command gives the same exits whatever the machine's load.
    text = pipe.read_text().replace("model: tiny", "cost: 5, model: tiny", 1)
    text = text.replace("tiles: 2}", "tiles: 2, cost: 20}")
    pipe.write_text(text)
    scores = _scores_csv(tmp / "oof.csv")
    outs = []
    for k in range(2):
        out = tmp / f"t{k}.yaml"
        res = runner.invoke(app, ["tune", "-p", str(pipe), "--scores", str(scores), "--out", str(out),
                                  "--prior-weight", "1", "--balanced", "--max-cost", "15"])
        assert res.exit_code == 0, res.output
        outs.append(out.read_text().split("date:")[0])
    assert outs[0] == outs[1]
    cfg, _ = load_pipeline_config(tmp / "t0.yaml")
    assert cfg.tuning["n"] == 60 and cfg.tuning["prior_weight"] == 1.0
    assert cfg.tuning["costs"] == "stored in the pipeline"
    assert cfg.tuning["stage_cost_ms"] == {"cls": 5.0, "tiles": 20.0}
    assert "out-of-fold" in cfg.tuning["fitted_on"]
    # Exits chosen out of fold by default: which tiers may exit was decided on the folds, and said.
    assert cfg.tuning["exits_chosen_on"].startswith("out-of-fold") and "chosen" in cfg.tuning["exit_tiers"]
    assert "tiers that may exit, chosen out of fold:" in res.output
    res = runner.invoke(app, ["tune", "-p", str(pipe), "--scores", str(scores), "--out", str(tmp / "ins.yaml"),
                              "--prior-weight", "1", "--balanced", "--max-cost", "15", "--exits-in-sample"])
    assert res.exit_code == 0, res.output
    cfg, _ = load_pipeline_config(tmp / "ins.yaml")
    assert cfg.tuning["exits_chosen_on"] == "in-sample fused probabilities" and "exit_tiers" not in cfg.tuning


def test_tune_says_when_the_budget_leaves_a_tier_unreached(setup, tmp_path):
    tmp, pipe = setup
    text = pipe.read_text().replace("model: tiny", "cost: 5, model: tiny", 1).replace("tiles: 2}", "tiles: 2, cost: 500}")
    pipe.write_text(text)
    res = runner.invoke(app, ["tune", "-p", str(pipe), "--scores", str(_scores_csv(tmp / "oof.csv")),
                              "--out", str(tmp / "u.yaml"), "--max-cost", "6"])
    assert res.exit_code == 0, res.output
    cfg, _ = load_pipeline_config(tmp / "u.yaml")
    assert cfg.tuning["unreachable_tiers"] == ["tiles"]
    assert "never reached" in res.output


def test_tune_scores_must_cover_every_stage(setup, tmp_path):
    tmp, pipe = setup
    bad = tmp / "bad.csv"
    bad.write_text("key,label,source,condition,fold,cls\nk0,1,a,day,a,1.0\nk1,0,a,day,a,-1.0\n")
    pipe.write_text(pipe.read_text().replace("model: tiny", "cost: 5, model: tiny", 1).replace("tiles: 2}", "tiles: 2, cost: 9}"))
    res = runner.invoke(app, ["tune", "-p", str(pipe), "--scores", str(bad), "--out", str(tmp / "b.yaml")])
    assert res.exit_code != 0 and "tiles" in str(res.exception)


def test_version_prints_the_package_version():
    from typer.testing import CliRunner

    import workzone
    from workzone.cli.main import app

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"workzone {workzone.__version__}"
