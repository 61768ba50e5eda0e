"""Every exception workzone raises.

The tree::

    WorkzoneError
    ├── ConfigError              a pipeline file or setting is wrong (names file, line, stage, key)
    │   └── UnknownStageKind     a `kind` no registered stage implements
    ├── MissingExtraError        an optional dependency is not installed (also an ImportError)
    ├── InvalidImageError        an input cannot be decoded or breaks a size limit
    ├── StageError               a stage failed (carries the stage name)
    │   ├── BackendUnavailable   a remote backend is down or its circuit breaker is open
    │   └── DeadlineExceeded     a stage or request ran past its deadline
    ├── ModelFileError           a model file is missing or does not match its metadata
    └── DataError                a manifest or dataset is malformed

Messages say what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "WorkzoneError",
    "ConfigError",
    "UnknownStageKind",
    "MissingExtraError",
    "InvalidImageError",
    "StageError",
    "BackendUnavailable",
    "DeadlineExceeded",
    "ModelFileError",
    "DataError",
]


class WorkzoneError(Exception):
    """Base class of every error raised by workzone."""


class ConfigError(WorkzoneError, ValueError):
    """A pipeline file or a setting is invalid."""


class UnknownStageKind(ConfigError):
    """A pipeline names a stage kind that no registered stage implements."""

    def __init__(self, kind: str, known: list[str]) -> None:
        self.kind = kind
        self.known = known
        super().__init__(
            f"unknown stage kind {kind!r}; registered kinds: {', '.join(sorted(known))}. "
            "Third-party kinds must be registered with workzone.register_stage before loading."
        )


class MissingExtraError(WorkzoneError, ImportError):
    """An optional dependency is needed but not installed."""

    def __init__(self, module: str, extra: str, purpose: str = "") -> None:
        self.module = module
        self.extra = extra
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"the optional dependency {module!r} is needed{what} but is not installed; "
            f"install it with: pip install 'workzone[{extra}]'"
        )


class InvalidImageError(WorkzoneError, ValueError):
    """An image input cannot be decoded or breaks a limit."""


class StageError(WorkzoneError):
    """A stage failed while loading or predicting."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        super().__init__(f"stage {stage!r}: {message}")


class BackendUnavailable(StageError):
    """A remote backend cannot be reached, or its circuit breaker is open."""


class DeadlineExceeded(StageError):
    """A stage or request ran past its deadline."""


class ModelFileError(WorkzoneError):
    """A model file is missing, unreadable, or inconsistent with its metadata."""


class DataError(WorkzoneError, ValueError):
    """A manifest or dataset is malformed."""
