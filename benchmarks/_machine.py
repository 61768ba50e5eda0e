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
            f"{platform.system()} {platform.release()}{ort}; no GPU")
