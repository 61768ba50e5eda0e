"""Maps a ``kind`` string to a Stage class, so pipelines are data.

Built-in kinds are registered lazily by module name: importing :mod:`workzone.stages` imports no
heavy dependency, and a kind's module is only imported when a pipeline uses it. Third parties add
kinds with :func:`register_stage`, or with an entry point in the ``workzone.stages`` group.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Callable, TypeVar

from workzone.errors import ConfigError, UnknownStageKind
from workzone.stages.base import Stage

__all__ = ["StageRegistry", "register_stage", "create_stage", "get_stage_class", "list_stages",
           "is_stage", "default_registry"]

S = TypeVar("S", bound=type[Stage])

# kind -> module that registers it when imported. Keeping this table here (and not importing the
# modules) is what keeps `import workzone` light.
_BUILTIN_MODULES: dict[str, str] = {
    "onnx_classifier": "workzone.stages.onnx_classifier",
    "sign_ocr": "workzone.stages.ocr",
    "roadwork_detector": "workzone.stages.roadwork_detector",
    "onnx_detector": "workzone.stages.onnx_detector",
    "ultralytics": "workzone.stages.yolo",
    "rfdetr": "workzone.stages.rfdetr",
    "hf_zero_shot_detection": "workzone.stages.open_vocab",
    "hf_image_classification": "workzone.stages.hf_classifier",
    "hf_zero_shot_image": "workzone.stages.zero_shot_image",
    "hf_depth": "workzone.stages.depth",
    "hf_segmentation": "workzone.stages.segmentation",
    "patch_anomaly": "workzone.stages.anomaly",
    "hf_clip_anomaly": "workzone.stages.clip_anomaly",
    "vlm_openai": "workzone.stages.vlm",
    "vlm_transformers": "workzone.stages.vlm_transformers",
    "reasoner_openai": "workzone.stages.reasoner",
    "temporal_consistency": "workzone.stages.temporal",
}


def _canonical(kind: str) -> str:
    # Issue texts and users write both `hf-depth` and `hf_depth`; accept either.
    return kind.strip().replace("-", "_")


class StageRegistry:
    """A mapping of kind -> Stage class."""

    def __init__(self, builtin: dict[str, str] | None = None) -> None:
        self._classes: dict[str, type[Stage]] = {}
        self._lazy: dict[str, str] = dict(builtin or {})
        self._entry_points_loaded = False

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
        if key not in self._classes and key in self._lazy:
            importlib.import_module(self._lazy[key])
        if key not in self._classes:
            self._load_entry_points()
        if key not in self._classes:
            raise UnknownStageKind(kind, self.kinds())
        return self._classes[key]

    def kinds(self) -> list[str]:
        return sorted(set(self._classes) | set(self._lazy))

    def __contains__(self, kind: str) -> bool:
        return _canonical(kind) in self._classes or _canonical(kind) in self._lazy

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group="workzone.stages"):
            cls = ep.load()
            self.register(ep.name)(cls)


default_registry = StageRegistry(_BUILTIN_MODULES)


def register_stage(kind: str | None = None, *, replace: bool = False) -> Callable[[S], S]:
    """Register a Stage class in the default registry (use as a decorator)."""
    return default_registry.register(kind, replace=replace)


def get_stage_class(kind: str) -> type[Stage]:
    """The Stage class for ``kind``; raises :class:`UnknownStageKind`."""
    return default_registry.get(kind)


def list_stages() -> list[str]:
    """Every kind known to the default registry (built-in ones are not imported)."""
    return default_registry.kinds()


def is_stage(kind: str) -> bool:
    return kind in default_registry


def create_stage(kind: str, name: str, params: dict | None = None, **kwargs) -> Stage:
    """Build a stage from raw params; validation errors become :class:`ConfigError`."""
    from workzone.config.loader import validate_params

    cls = get_stage_class(kind)
    return cls(name, validate_params(cls, name, params or {}), **kwargs)
