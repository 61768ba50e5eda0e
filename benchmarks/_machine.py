"""Describe the machine a benchmark ran on, for results files."""

from __future__ import annotations

import os
import platform
import subprocess


def describe_machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import onnxruntime

        ort = f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        ort = ""
    return (f"{cpu}, {len(os.sched_getaffinity(0))} usable cores{mem}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}{ort}; {describe_gpus()}")


def describe_gpus() -> str:
    """The NVIDIA cards the driver lists (name, memory), or "no GPU". Asks ``nvidia-smi`` rather than torch: a results
    file of an onnxruntime-only benchmark run on a GPU machine must still say which machine it was."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "no GPU"
    cards = [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []
    return "GPU: " + "; ".join(cards) if cards else "no GPU"
