"""``workzone check`` and ``workzone plan`` through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.fakes.openai_server import FakeOpenAIServer
from workzone.cli.plan import register

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def write(tmp_path: Path, body: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


HEAVY = """
name: heavy
tiers:
  - name: fast
    stages:
      - {{name: clf, kind: onnx_classifier, model: tiny.onnx}}
    exit: {{lower: 0.1, upper: 0.9}}
  - name: vlm
    stages:
      - {{name: vlm, kind: vlm_openai, base_url: "http://127.0.0.1:{port}/v1", model: Qwen/Qwen3-VL-8B-Instruct, max_concurrency: 8}}
  - name: think
    stages:
      - {{name: judge, kind: reasoner_openai, base_url: "http://127.0.0.1:{port2}/v1", model: deepseek-ai/DeepSeek-R1-Distill-Qwen-14B}}
"""


def test_check_valid_pipeline(app, tmp_path):
    (tmp_path / "tiny.onnx").write_bytes(b"onnx")
    res = runner.invoke(app, ["check", str(write(tmp_path, HEAVY.format(port=8001, port2=8002)))])
    assert res.exit_code == 0, res.output
    assert "pipeline valid: 3 stages over 3 tiers" in res.output
    assert "[vlm] installed" in res.output


def test_check_reports_a_missing_model_file(app, tmp_path):
    res = runner.invoke(app, ["check", str(write(tmp_path, HEAVY.format(port=8001, port2=8002)))])
    assert res.exit_code == 1
    assert "tiny.onnx does not exist" in res.output and "1 problem(s)" in res.output


@pytest.mark.parametrize("body, message", [
    ("tiers:\n  - name: t\n    stages:\n      - {name: x, kind: no_such_kind}\n", "unknown stage kind 'no_such_kind'"),
    ("tiers:\n  - name: t\n    stages:\n      - {name: v, kind: vlm_openai, model: m}\n", "base_url"),
    ("tiers: [\n", "not valid YAML"),
])
def test_check_invalid_pipelines(app, tmp_path, body, message):
    res = runner.invoke(app, ["check", str(write(tmp_path, body))])
    assert res.exit_code == 1
    assert message in " ".join(res.output.split())


def test_check_endpoints(app, tmp_path):
    (tmp_path / "tiny.onnx").write_bytes(b"onnx")
    with FakeOpenAIServer(models=("Qwen/Qwen3-VL-8B-Instruct",)) as srv:
        # The reasoner's server (port2) is not running.
        path = write(tmp_path, HEAVY.format(port=srv.port, port2=srv.port + 1 if srv.port < 65535 else 1))
        res = runner.invoke(app, ["check", str(path), "--endpoints", "--timeout", "2"])
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    assert "serves Qwen/Qwen3-VL-8B-Instruct" in out and "ConnectError" in out and "1 problem(s)" in out


def test_plan_prints_table_and_commands(app, tmp_path):
    path = write(tmp_path, HEAVY.format(port=8001, port2=8002))
    res = runner.invoke(app, ["plan", str(path), "--gpus", "2x80GB", "--quant", "fp8", "--server", "vllm"])
    assert res.exit_code == 0, res.output
    assert "GPU memory plan on 2 x 80 GB (quant fp8; estimates)" in res.output
    assert "vllm serve Qwen/Qwen3-VL-8B-Instruct" in res.output and "--quantization fp8" in res.output
    assert "vllm serve deepseek-ai/DeepSeek-R1-Distill-Qwen-14B" in res.output
    assert "sglang" not in res.output
    assert "on CPU: clf" in res.output


def test_plan_json(app, tmp_path):
    path = write(tmp_path, HEAVY.format(port=8001, port2=8002))
    res = runner.invoke(app, ["plan", str(path), "--gpus", "1x80GB", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {i["model"] for i in data["items"]} == {"Qwen/Qwen3-VL-8B-Instruct", "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"}
    # Engines reserve their whole --gpu-memory-utilization share: at least their estimate.
    assert sum(i["total_gb"] for i in data["items"]) <= sum(data["used_gb"]) <= 79
    assert {c["server"] for c in data["commands"]} == {"vllm", "sglang", "lmdeploy"}


@pytest.mark.parametrize("args, message", [
    (["--gpus", "1x24GB"], "plan refused"),
    (["--gpus", "lots"], "--gpus: expected COUNTxMEMORY"),
    (["--gpus", "1x80GB", "--quant", "int3"], "--quant: expected"),
    (["--gpus", "1x80GB", "--server", "tgi"], "--server: expected"),
])
def test_plan_refusals_exit_non_zero(app, tmp_path, args, message):
    path = write(tmp_path, HEAVY.format(port=8001, port2=8002))
    res = runner.invoke(app, ["plan", str(path), *args])
    assert res.exit_code == 1
    assert message in " ".join(res.output.split())


def test_registered_on_the_main_app():
    from workzone.cli.main import app as main_app

    names = {c.name for c in main_app.registered_commands}
    assert {"check", "plan"} <= names
