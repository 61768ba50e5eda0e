"""Request-level errors, and the one place where every exception becomes an HTTP status.

The request-level classes live in :mod:`workzone.errors` with the rest of the tree (they are
raised by the service and the routes, never by the core)::

    WorkzoneError
    ├── RequestError            the request itself is wrong (400)
    │   ├── Unauthorized        missing or wrong API key (401)
    │   ├── UrlNotAllowed       URL inputs disabled, or the URL points at a private address (403)
    │   ├── PayloadTooLarge     body over the limit (413)
    │   ├── UnsupportedMediaType  content type not accepted (415)
    │   └── UrlFetchFailed      the URL could not be fetched (422)
    └── NotReady                the pipeline is still loading, or failed to load (503)

:func:`error_status` maps by class (walking the MRO), never by message text.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from workzone.errors import (
    BackendUnavailable,
    ConfigError,
    DeadlineExceeded,
    DecodeBudgetExceeded,
    InvalidImageError,
    MissingExtraError,
    ModelFileError,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    ShuttingDown,
    StageError,
    Unauthorized,
    UnsupportedMediaType,
    UrlFetchFailed,
    UrlNotAllowed,
    WorkzoneError,
)

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from starlette.responses import JSONResponse

__all__ = ["error_status", "error_body", "public_message", "register_exception_handlers", "REFUSAL_KEY"]

log = logging.getLogger("workzone.server")


# class -> (HTTP status, stable error type for clients). Order does not matter: the most derived
# class of the exception that is listed here wins.
_STATUS: dict[type[BaseException], tuple[int, str]] = {
    Unauthorized: (401, "unauthorized"),
    UrlNotAllowed: (403, "url_not_allowed"),
    PayloadTooLarge: (413, "payload_too_large"),
    UnsupportedMediaType: (415, "unsupported_media_type"),
    RequestTimeout: (408, "request_timeout"),
    UrlFetchFailed: (422, "url_fetch_failed"),
    RequestError: (400, "bad_request"),
    InvalidImageError: (422, "invalid_image"),
    DecodeBudgetExceeded: (422, "decode_budget_exceeded"),
    Overloaded: (429, "overloaded"),
    ShuttingDown: (503, "shutting_down"),
    NotReady: (503, "not_ready"),
    BackendUnavailable: (503, "backend_unavailable"),
    DeadlineExceeded: (504, "deadline_exceeded"),
    ConfigError: (500, "config_error"),
    MissingExtraError: (500, "missing_extra"),
    ModelFileError: (500, "model_file_error"),
    StageError: (500, "stage_error"),
    WorkzoneError: (500, "internal_error"),
}


#: Scope key where the handlers leave the server's own reason for a 429/503, for the refusal log
#: (:class:`workzone.server.admission.RefusalLog`); the client is told a fixed sentence.
REFUSAL_KEY = "workzone.refusal"

def error_status(exc: BaseException) -> tuple[int, str]:
    """HTTP status and error type for ``exc``; unknown exceptions are 500 ``internal_error``."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500, "internal_error"


# What a client is told for statuses whose exception text may name internals (model paths, backend
# URLs, environment variables, raw third-party messages): a fixed sentence per error type.
_PUBLIC = {
    "overloaded": "the server is at capacity; retry after the Retry-After delay",
    "shutting_down": "the server is shutting down; retry on another replica",
    "not_ready": "the pipeline is not ready; retry after the Retry-After delay",
    "backend_unavailable": "a backend is unavailable; retry later",
    "deadline_exceeded": "the request ran past its deadline",
}
_MAX_MESSAGE = 300


def public_message(exc: BaseException) -> str:
    """What a response may say about ``exc``: the message of a client error (4xx, about the client's
    own input), a fixed sentence for everything else. Never raw third-party text, a path or a URL
    of the server's."""
    status, kind = error_status(exc)
    if status < 500 and status != 429 and isinstance(exc, WorkzoneError):
        text = str(exc)
        return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 1] + "…"
    return _PUBLIC.get(kind, "internal server error; see the server log")


def error_body(status: int, kind: str, message: str, detail: Any = None) -> dict[str, Any]:
    """The JSON body of every error response (see ``protocol.ErrorResponse``)."""
    body: dict[str, Any] = {"type": kind, "message": message, "status": status}
    if detail is not None:
        body["detail"] = detail
    return {"error": body}


def error_headers(exc: BaseException, status: int, default_retry_after: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    if status in (429, 503):
        retry = getattr(exc, "retry_after_s", None) or default_retry_after
        headers["Retry-After"] = str(max(1, round(retry)))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="workzone"'
    return headers


def error_response(exc: BaseException, default_retry_after: float = 1.0) -> "JSONResponse":
    """Turn any exception into the JSON error response the API documents."""
    from starlette.responses import JSONResponse

    status, kind = error_status(exc)
    if status >= 500 and not isinstance(exc, (NotReady, ShuttingDown, BackendUnavailable)):
        log.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return JSONResponse(error_body(status, kind, public_message(exc)), status_code=status,
                        headers=error_headers(exc, status, default_retry_after))


def register_exception_handlers(app: "FastAPI", default_retry_after: float = 1.0) -> None:
    """Register every handler at once: workzone errors, validation errors, HTTP errors, the rest."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import JSONResponse

    async def _workzone(request: "Request", exc: Exception) -> JSONResponse:
        status, kind = error_status(exc)
        if status in (429, 503):  # the reason for the refusal log (admission.RefusalLog), not for the client
            request.scope[REFUSAL_KEY] = (kind, str(exc))
        return error_response(exc, default_retry_after)

    async def _validation(_: "Request", exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse(error_body(422, "validation_error", "the request does not match the schema", detail),
                            status_code=422)

    async def _http(_: "Request", exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        # 400: Starlette's own refusals, e.g. a malformed multipart body (documented as bad_request).
        kind = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(exc.status_code, kind, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    app.add_exception_handler(WorkzoneError, _workzone)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _workzone)
