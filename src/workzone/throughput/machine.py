"""Describe the machine a benchmark ran on (CPU model, cores, GPU, library versions)."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess

__all__ = ["describe_machine"]


def describe_machine(device: str = "cpu") -> dict[str, str]:
    """What the results ran on, as short strings (CPU model, cores, RAM, GPU, versions)."""
    info = {"cpu": _cpu_model(), "cores": str(len(os.sched_getaffinity(0))), "ram": _ram(),
            "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}",
            # Shared machines: the load while the benchmark ran says how far to trust CPU numbers.
            "load average (1 min)": f"{os.getloadavg()[0]:.1f}"}
    for mod in ("onnxruntime", "torch", "torchvision", "PIL"):
        if importlib.util.find_spec(mod) is not None:
            info[mod] = getattr(__import__(mod), "__version__", "?")
    info["gpu"] = "none"
    if device.startswith("cuda") and "torch" in info:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.device(device))
            info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
            info["cuda"] = str(torch.version.cuda)
    return info


def _cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def _ram() -> str:
    try:
        with open("/proc/meminfo") as fh:
            return f"{int(fh.readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "?"
