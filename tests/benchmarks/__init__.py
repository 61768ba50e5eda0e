"""Tests of the scripts under benchmarks/, which are files, not a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the folder is not a package; its scripts import their helpers, e.g.
    ``_report``, from beside them when run, so a script that does needs ``benchmarks`` on ``sys.path``)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
