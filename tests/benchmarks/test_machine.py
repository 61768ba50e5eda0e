"""benchmarks/_machine.py: the machine line of every results file names the GPU when there is one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.benchmarks import load_script


def _module():
    return load_script("_machine")


def _fake_nvidia_smi(folder: Path, stdout: str, rc: int = 0) -> None:
    # The real tool cannot run on this machine; a stand-in with its CSV output (name, memory.total) can.
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '%b' '{stdout}'\nexit {rc}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


def test_a_machine_without_the_driver_says_no_gpu(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    assert _module().describe_machine().endswith("; no GPU")


def test_the_cards_the_driver_lists_are_named(tmp_path, monkeypatch) -> None:
    _fake_nvidia_smi(tmp_path, "NVIDIA H100 80GB HBM3, 81559 MiB\\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    line = _module().describe_machine()
    assert line.endswith("; GPU: NVIDIA H100 80GB HBM3, 81559 MiB") and "no GPU" not in line


def test_a_driver_that_fails_counts_as_no_gpu(tmp_path, monkeypatch) -> None:
    _fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed because it could not communicate with the driver", rc=9)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert _module().describe_gpus() == "no GPU"
