"""Every exception workzone raises.

The tree::

    WorkzoneError
    ├── ConfigError              a pipeline file or setting is wrong (names file, line, stage, key)
    │   └── UnknownStageKind     a `kind` no registered stage implements
    ├── MissingExtraError        an optional dependency is not installed (also an ImportError)
    ├── InvalidImageError        an input cannot be decoded or breaks a size limit
    │   └── DecodeBudgetExceeded an image (or a request's images together) took more decode CPU than allowed
    ├── StageError               a stage failed (carries the stage name)
    │   ├── BackendUnavailable   a remote backend is down or its circuit breaker is open
    │   └── DeadlineExceeded     a stage or request ran past its deadline
    ├── ModelFileError           a model file is missing or does not match its metadata
    ├── DataError                a manifest or dataset is malformed
    ├── Overloaded               the request queue is full (HTTP 429 + Retry-After)
    ├── ShuttingDown             the service is stopping (HTTP 503)
    ├── NotReady                 the pipeline is still loading or failed to load (HTTP 503)
    └── RequestError             the request itself is wrong (HTTP 400)
        ├── Unauthorized         missing or wrong API key (401)
        ├── UrlNotAllowed        URL inputs disabled, or a private/loopback address (403)
        ├── PayloadTooLarge      body over the limit (413)
        ├── UnsupportedMediaType content type not accepted (415)
        ├── RequestTimeout       the request's headers or body did not arrive in time (408)
        └── UrlFetchFailed       the URL could not be fetched (422)

Messages say what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "WorkzoneError",
    "ConfigError",
    "UnknownStageKind",
    "MissingExtraError",
    "InvalidImageError",
    "DecodeBudgetExceeded",
    "StageError",
    "BackendUnavailable",
    "DeadlineExceeded",
    "ModelFileError",
    "DataError",
    "Overloaded",
    "ShuttingDown",
    "NotReady",
    "RequestError",
    "Unauthorized",
    "UrlNotAllowed",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "RequestTimeout",
    "UrlFetchFailed",
]


class WorkzoneError(Exception):
    """Base class of every error raised by workzone."""


class ConfigError(WorkzoneError, ValueError):
    """A pipeline file or a setting is invalid."""


class UnknownStageKind(ConfigError):
    """A pipeline names a stage kind that no registered stage implements."""

    def __init__(self, kind: str, known: list[str], where: str = "") -> None:
        self.kind = kind
        self.known = known
        super().__init__(
            (f"{where}: " if where else "")
            + f"unknown stage kind {kind!r}; registered kinds: {', '.join(sorted(known))}. "
            "A third-party kind is registered with workzone.register_stage before loading, or by an entry point in the workzone.stages group."
        )


class MissingExtraError(WorkzoneError, ImportError):
    """An optional dependency is needed but not installed."""

    def __init__(self, module: str, extra: str, purpose: str = "", message: str | None = None) -> None:
        self.module = module
        self.extra = extra
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            message or f"the optional dependency {module!r} is needed{what} but is not installed; "
            f"install it with: pip install 'workzone[{extra}]'"
        )


class InvalidImageError(WorkzoneError, ValueError):
    """An image input cannot be decoded or breaks a limit."""


class DecodeBudgetExceeded(InvalidImageError):
    """Decoding ran past its CPU budget and was stopped (the decoder process is killed).

    Attributes:
        whole_request: the request's shared budget ran out (every image of a batch is refused with
            it), rather than one image's own.
    """

    def __init__(self, message: str, whole_request: bool = False) -> None:
        self.whole_request = whole_request
        super().__init__(message)


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


class Overloaded(WorkzoneError):
    """The batcher's queue is full (or another limit, named by ``reason``, is reached); retry after
    ``retry_after_s`` seconds."""

    def __init__(self, queued: int, limit: int, retry_after_s: float, reason: str | None = None) -> None:
        self.queued = queued
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(
            f"{reason}; retry after {retry_after_s:g} s" if reason else
            f"the request queue is full ({queued} of {limit} waiting); retry after {retry_after_s:g} s "
            "or raise WORKZONE_QUEUE_SIZE"
        )


class ShuttingDown(WorkzoneError):
    """The batcher no longer accepts work because the service is stopping (or not started yet)."""

    def __init__(self, message: str = "the service is shutting down; retry on another replica",
                 retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class RequestError(WorkzoneError):
    """The request is malformed (a field is missing, the JSON does not parse, ...)."""


class Unauthorized(RequestError):
    """No API key, or one that is not accepted."""


class UrlNotAllowed(RequestError):
    """URL inputs are disabled, or the URL resolves to a private, loopback or link-local address."""


class PayloadTooLarge(RequestError):
    """The request body (or a fetched image) is larger than the configured limit."""


class UnsupportedMediaType(RequestError):
    """The request's Content-Type is not one the endpoint accepts."""


class RequestTimeout(RequestError):
    """The client did not send the request's headers or body within the server's read timeout."""


class UrlFetchFailed(RequestError):
    """The image URL could not be fetched (timeout, HTTP error, connection refused)."""


class NotReady(WorkzoneError):
    """The pipeline is still loading (or failed to load); the service cannot answer yet."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)
