"""Lazy imports of optional dependencies with an actionable error."""

from __future__ import annotations

import importlib
from importlib.util import find_spec
from types import ModuleType

from workzone.errors import MissingExtraError


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra to install.

    Args:
        module: dotted module name, e.g. ``"torch"``.
        extra: the workzone extra that installs it, e.g. ``"train"``.
        purpose: what it is needed for, for the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        err = MissingExtraError(module, extra, purpose)
        if getattr(exc, "name", None) not in (module, module.split(".")[0]):
            # The module is there but something it imports is not (a wheel carried without its
            # dependencies, a binary built for another Python): say what, or the message misleads.
            err.msg = f"{err.args[0]} (importing it failed: {type(exc).__name__}: {exc})"  # ImportError prints msg
            err.args = (err.msg,)
        raise err from exc


def require_installed(modules: list[str], extra: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` now, before any work, when one of ``modules`` is not installed.

    Nothing is imported (``find_spec`` only), so a command can check what its last step needs
    before its first step runs.
    """
    for module in modules:
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module without a spec
            found = False
        if not found:
            raise MissingExtraError(module, extra, purpose)
