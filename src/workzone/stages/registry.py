"""Maps a ``kind`` string to a Stage class, so pipelines are data; validates a kind's params.

Every kind, built-in or third-party, is found the same way: an entry point in the
``workzone.stages`` group (``onnx_classifier = "workzone.stages.onnx_classifier:OnnxClassifierStage"``,
see ``pyproject.toml``), loaded only when a pipeline names it, so ``import workzone.stages`` imports
no heavy dependency. Code can also add a kind with :func:`register_stage`.

A built-in kind's module is named after the kind. That convention is also the fallback when the
installed metadata predates the entry points (a stale editable install, or ``src/`` on
``PYTHONPATH``): the modules of this package are then read as ``kind = module name``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from importlib import metadata
from typing import Any, Callable, TypeVar

from pydantic import ValidationError

from workzone.errors import ConfigError, UnknownStageKind
from workzone.stages.base import Stage, StageParams

__all__ = ["StageRegistry", "register_stage", "create_stage", "get_stage_class", "list_stages",
           "is_stage", "default_registry", "validate_params", "builtin_modules", "ENTRY_POINT_GROUP"]

S = TypeVar("S", bound=type[Stage])

ENTRY_POINT_GROUP = "workzone.stages"
_PACKAGE = "workzone.stages"
_NOT_KINDS = {"base", "registry"}  # modules of this package that hold no kind


def _canonical(kind: str) -> str:
    # Issue texts and users write both `hf-depth` and `hf_depth`; accept either.
    return kind.strip().replace("-", "_")


def builtin_modules() -> dict[str, str]:
    """kind -> module for the built-in kinds, read from this package's module names (not imported)."""
    here = importlib.import_module(_PACKAGE)
    return {m.name: f"{_PACKAGE}.{m.name}" for m in pkgutil.iter_modules(here.__path__)
            if not m.name.startswith("_") and m.name not in _NOT_KINDS}


def _stage_class_in(module: str, kind: str) -> type[Stage]:
    """The Stage subclass defined in ``module`` whose ``kind`` is ``kind``."""
    mod = importlib.import_module(module)
    for _, obj in inspect.getmembers(mod, inspect.isclass):
        if issubclass(obj, Stage) and obj.__module__ == mod.__name__ and obj.kind == kind:
            return obj
    raise ConfigError(f"module {module} defines no Stage subclass with kind = {kind!r}")


class StageRegistry:
    """A mapping of kind -> Stage class, filled from entry points on first use."""

    def __init__(self, group: str | None = ENTRY_POINT_GROUP) -> None:
        self._classes: dict[str, type[Stage]] = {}
        self._lazy: dict[str, Callable[[], type[Stage]]] = {}
        self._group = group
        self._discovered = group is None

    def register(self, kind: str | None = None, *, replace: bool = False) -> Callable[[S], S]:
        """Class decorator: register a Stage subclass under ``kind`` (default: its ``kind`` attr)."""

        def deco(cls: S) -> S:
            key = _canonical(kind or cls.kind)
            if not key:
                raise ConfigError(f"{cls.__name__}: a stage needs a non-empty kind")
            existing = self._classes.get(key)
            if existing is not None and existing is not cls and not replace:
                raise ConfigError(f"stage kind {key!r} is already registered by {existing.__name__}")
            self._classes[key] = cls
            if not cls.kind:
                cls.kind = key
            return cls

        return deco

    def get(self, kind: str) -> type[Stage]:
        key = _canonical(kind)
        self._discover()
        if key not in self._classes and key in self._lazy:
            self.register(key)(self._lazy[key]())
        if key not in self._classes:
            raise UnknownStageKind(kind, self.kinds())
        return self._classes[key]

    def kinds(self) -> list[str]:
        self._discover()
        return sorted(set(self._classes) | set(self._lazy))

    def __contains__(self, kind: str) -> bool:
        self._discover()
        return _canonical(kind) in self._classes or _canonical(kind) in self._lazy

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        eps = list(metadata.entry_points(group=self._group))
        for ep in eps:
            self._lazy.setdefault(_canonical(ep.name), ep.load)
        if not any(ep.value.startswith(f"{_PACKAGE}.") for ep in eps):  # metadata older than the entry points
            for kind, module in builtin_modules().items():
                self._lazy.setdefault(kind, lambda m=module, k=kind: _stage_class_in(m, k))


default_registry = StageRegistry()


def register_stage(kind: str | None = None, *, replace: bool = False) -> Callable[[S], S]:
    """Register a Stage class in the default registry (use as a decorator)."""
    return default_registry.register(kind, replace=replace)


def get_stage_class(kind: str) -> type[Stage]:
    """The Stage class for ``kind``; raises :class:`UnknownStageKind`."""
    return default_registry.get(kind)


def list_stages() -> list[str]:
    """Every kind known to the default registry (their modules are not imported)."""
    return default_registry.kinds()


def is_stage(kind: str) -> bool:
    return kind in default_registry


def validate_params(cls: type[Stage], name: str, raw: dict[str, Any], *,
                    locate: Callable[[Any], str] | None = None) -> StageParams:
    """Validate ``raw`` against ``cls.Params``; every error names the stage, kind and key.

    Args:
        cls: the stage class.
        name: the stage's name in the pipeline.
        raw: the kind's own keys.
        locate: maps the first key of an error's path (``None`` for the entry itself) to where it
            was written (``p.yaml:8``); default ``<params>:?``.

    Raises:
        ConfigError: ``p.yaml:8: stage 'ocr' (kind sign_ocr): min_score: ..., got 3``, one line per error.
    """
    try:
        return cls.Params.model_validate(raw)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(params)"
            where = locate(err["loc"][0] if err["loc"] else None) if locate else "<params>:?"
            what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            value = "" if err["type"] in ("extra_forbidden", "missing") else f", got {err.get('input')!r}"
            msgs.append(f"{where}: stage {name!r} (kind {cls.kind}): {key}: {what}{value}")
        raise ConfigError("\n".join(msgs)) from exc


def create_stage(kind: str, name: str, params: dict | None = None, **kwargs: Any) -> Stage:
    """Build a stage from raw params; validation errors become :class:`ConfigError`."""
    cls = get_stage_class(kind)
    return cls(name, validate_params(cls, name, params or {}), **kwargs)
