"""Commands refuse what cannot work before doing any work, with one sentence naming the fix."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from tests.cli.test_cli import setup  # noqa: F401 - the tiny pipeline and manifest fixture
from workzone.cli.main import app
from workzone.errors import MissingExtraError

runner = CliRunner()


def _uninstall(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` look uninstalled to this process (``find_spec`` and ``import`` both fail)."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in modules):
            monkeypatch.delitem(sys.modules, name)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_eval_html_without_the_report_extra_refuses_before_evaluating(setup, monkeypatch):  # noqa: F811
    tmp, pipe = setup
    _uninstall(monkeypatch, "matplotlib")
    res = runner.invoke(app, ["eval", str(tmp / "manifest.csv"), "-p", str(pipe), "--out", str(tmp / "r.json"),
                              "--html", str(tmp / "r.html")])
    assert isinstance(res.exception, MissingExtraError)
    assert "pip install 'workzone[report]'" in str(res.exception) and "eval --html" in str(res.exception)
    assert not (tmp / "r.json").exists()  # nothing was evaluated


def test_report_without_the_report_extra_refuses_before_evaluating(setup, monkeypatch):  # noqa: F811
    tmp, pipe = setup
    _uninstall(monkeypatch, "matplotlib")
    res = runner.invoke(app, ["report", str(tmp / "manifest.csv"), "-p", str(pipe), "--predictions",
                              str(tmp / "p.jsonl"), "--out", str(tmp / "r.html")])
    assert isinstance(res.exception, MissingExtraError) and "workzone[report]" in str(res.exception)
    assert not (tmp / "p.jsonl").exists()


def test_serve_refuses_a_pipeline_whose_extras_are_missing_before_binding(tmp_path, monkeypatch):
    weights = tmp_path / "yolo.pt"
    weights.write_bytes(b"not loaded: the check comes first")
    pipe = tmp_path / "p.yaml"
    pipe.write_text("name: needs-detect\ntiers:\n  - name: t\n    stages:\n"
                    "      - {name: yolo, kind: ultralytics, model: yolo.pt}\n")
    _uninstall(monkeypatch, "ultralytics")
    # 203.0.113.1 (TEST-NET) is no address of this machine: binding fails at once if the check does not come first
    res = runner.invoke(app, ["serve", "-p", str(pipe), "--host", "203.0.113.1", "--port", "8000"])
    assert isinstance(res.exception, MissingExtraError)
    msg = str(res.exception)
    assert msg.startswith("workzone serve refused before starting: pipeline 'needs-detect' cannot run here")
    # the same words `workzone check` prints for that stage
    assert "stage 'yolo' (kind ultralytics) extras: missing ultralytics: pip install 'workzone[detect]'" in msg
    assert f"workzone check {pipe}" in msg


def _weak_then_strong_scores(path, n, seed=0):
    """Out-of-fold scores where tier 1's stage barely separates and tier 2's separates well."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = ["key,label,source,condition,fold,cls,tiles"]
    for i in range(n):
        y = i % 2
        lines.append(f"k{i},{y},s{i % 3},day,s{i % 3},{(2 * y - 1) * 0.2 + rng.normal():.4f},"
                     f"{(2 * y - 1) * 2.5 + rng.normal():.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _costed(pipe, tier2_cost):
    pipe.write_text(pipe.read_text().replace("model: tiny", "cost: 5, model: tiny", 1)
                    .replace("tiles: 2}", f"tiles: 2, cost: {tier2_cost}}}"))


def test_tune_warns_when_the_budget_costs_mcc_and_strict_refuses(setup):  # noqa: F811
    from workzone.errors import ConfigError

    tmp, pipe = setup
    _costed(pipe, 500)
    scores = _weak_then_strong_scores(tmp / "oof.csv", 400)
    args = ["tune", "-p", str(pipe), "--scores", str(scores), "--out", str(tmp / "t.yaml"), "--max-cost", "30"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "warning: the budget --max-cost 30 ms costs" in text and "raise --max-cost" in text
    assert "of images decided by tier 1 'whole' alone" in text
    assert (tmp / "t.yaml").exists()
    (tmp / "t.yaml").unlink()
    res = runner.invoke(app, [*args, "--strict"])
    assert isinstance(res.exception, ConfigError) and "costs" in str(res.exception)
    assert not (tmp / "t.yaml").exists()  # nothing written
    # Without a budget, nothing to warn about on 400 images: --strict writes the pipeline.
    res = runner.invoke(app, [*args[:-2], "--strict"])
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output and (tmp / "t.yaml").exists()


def test_tune_warns_on_a_small_set_and_strict_refuses(setup):  # noqa: F811
    from workzone.errors import ConfigError

    tmp, pipe = setup
    _costed(pipe, 20)
    scores = _weak_then_strong_scores(tmp / "oof.csv", 60)
    args = ["tune", "-p", str(pipe), "--scores", str(scores), "--out", str(tmp / "s.yaml")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "the tuning set is small (60 images, 30 of the rarer class" in " ".join(res.output.split())
    res = runner.invoke(app, [*args, "--strict", "--out", str(tmp / "s2.yaml")])
    assert isinstance(res.exception, ConfigError) and "small" in str(res.exception)
    assert not (tmp / "s2.yaml").exists()


def test_a_batch_job_refuses_a_pipeline_whose_extras_are_missing_before_reading_inputs(tmp_path, monkeypatch):
    from workzone.batch import BatchOptions, run_batch_job

    (tmp_path / "yolo.pt").write_bytes(b"not loaded")
    pipe = tmp_path / "p.yaml"
    pipe.write_text("name: needs-detect\ntiers:\n  - name: t\n    stages:\n"
                    "      - {name: yolo, kind: ultralytics, model: yolo.pt}\n")
    _uninstall(monkeypatch, "ultralytics")
    with pytest.raises(MissingExtraError, match=r"workzone batch refused before starting.*workzone\[detect\]"):
        run_batch_job([str(tmp_path / "no-such-folder")], [tmp_path / "r.jsonl"], pipeline=pipe,
                      options=BatchOptions(engine="ray"))
    assert not (tmp_path / "r.jsonl").exists()
