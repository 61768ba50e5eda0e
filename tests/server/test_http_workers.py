"""``workzone serve --http-workers N``: N real server processes on one port in front of one engine process,
stopped together on SIGTERM, and stopped together when one of them dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server_support import jpeg_bytes, wait_until_ready, write_pipeline
from workzone.server.settings import ServerSettings, settings_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT and /proc: Linux")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _start(pipeline: Path, workers: int) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "workzone.cli.main", "serve", "--pipeline", str(pipeline),
                             "--port", str(port), "--http-workers", str(workers), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "WORKZONE_DECODE_WORKERS": "1"})
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(proc, url, timeout=60)
    end = time.monotonic() + 30
    # Every server must be up, not just the first to answer: each answers 503 until its own pipeline is attached,
    # and the kernel deals fresh connections to any of them.
    while len(_children(proc.pid)) < workers + 1 and time.monotonic() < end:
        time.sleep(0.1)
    while time.monotonic() < end:
        probes = [httpx.get(url + "/readyz", headers={"connection": "close"}, timeout=5).status_code for _ in range(20)]
        if all(code == 200 for code in probes):
            break
        time.sleep(0.1)
    return proc, url


def _wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    end = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < end:
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and "zombie" not in _state(p)]
        time.sleep(0.1)
    return alive


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_workers_answer_on_one_port_and_stop_together_on_sigterm(model_dir: Path) -> None:
    proc, url = _start(write_pipeline(model_dir, "workers"), 2)
    try:
        children = _children(proc.pid)
        assert len(children) == 3  # the engine and two servers
        with httpx.Client(timeout=30) as client:
            answers = {client.post(url + "/v1/detect", content=jpeg_bytes(seed=k % 3), headers={
                "content-type": "image/jpeg", "connection": "close"}).json()["probability"] for k in range(12)}
        assert len(answers) == 3  # three different images, each answered the same every time
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert _wait_gone(children) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_server_that_dies_stops_the_others_and_the_status_says_so(model_dir: Path) -> None:
    proc, url = _start(write_pipeline(model_dir, "workers_die"), 2)
    try:
        children = _children(proc.pid)
        servers = [p for p in children if "cascade_process" not in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(servers) == 2
        os.kill(servers[0], signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        assert _wait_gone(children) == []
        assert "exited with" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_settings_cross_to_the_servers_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    given = ServerSettings(pipeline="x.yaml", api_keys=("key-one-1", "key-two-2"), batch_size=32, engine_process=True,
                           default_deadline_s=2.5, allow_url_fetch=True)
    for name, value in settings_env(given).items():
        monkeypatch.setenv(name, value)
    assert ServerSettings() == given
