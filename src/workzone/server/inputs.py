"""Reading images out of HTTP requests: multipart uploads, raw bodies, JSON with base64 or URLs.

(The body-size limit that guards these reads is :class:`workzone.server.middleware.BodyLimitMiddleware`.)

Inputs are always turned into bytes here and decoded by the service; a string from a client is
never handed to :func:`workzone.io.images.decode_image` (which would treat a short string as a
local file path).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from workzone.errors import InvalidImageError, RequestError, UnsupportedMediaType, UrlNotAllowed
from workzone.io.images import decode_base64
from workzone.server.fetch import fetch_image_bytes
from workzone.server.protocol import BatchDetectRequest, DetectRequest, ImageInput

if TYPE_CHECKING:
    from starlette.requests import Request

    from workzone.server.settings import ServerSettings

__all__ = ["RawImage", "read_single", "read_batch", "image_bytes",
           "deadline_header", "parse_deadline"]

DEADLINE_HEADER = "x-deadline-s"


@dataclass(frozen=True)
class RawImage:
    """An image as received: encoded bytes, or a URL still to fetch."""

    data: bytes | None
    url: str | None
    source: str
    b64: str | None = None


def parse_deadline(raw: str | None, what: str) -> float | None:
    """A deadline given as text (a header or a form field), in seconds; ``None`` when absent.

    Raises:
        RequestError: not a positive finite number; the message names ``what``.
    """
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise RequestError(f"{what} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise RequestError(f"{what} must be a positive number of seconds, got {raw!r}")
    return value


def deadline_header(request: "Request") -> float | None:
    """The ``X-Deadline-S`` header as seconds, if present."""
    return parse_deadline(request.headers.get(DEADLINE_HEADER), "X-Deadline-S")


def _media_type(request: "Request") -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _parse_json(model: type[BaseModel], body: bytes) -> Any:
    from fastapi.exceptions import RequestValidationError

    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        # Same 422 shape as FastAPI's own body validation, with the "body" prefix in each loc.
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _raw_from_input(item: ImageInput, source: str) -> RawImage:
    if item.url is not None:
        return RawImage(None, item.url, item.url)
    return RawImage(None, None, source, b64=item.image)


def _form_deadline(form: Any) -> float | None:
    raw = form.get("deadline_s")
    return parse_deadline(raw if isinstance(raw, str) else None, "form field deadline_s")


async def _form_files(request: "Request", max_files: int) -> tuple[list[RawImage], float | None]:
    form = await request.form(max_files=max_files, max_fields=16)
    try:
        images = []
        for key, value in form.multi_items():
            if hasattr(value, "read"):  # an UploadFile
                images.append(RawImage(await value.read(), None, f"upload:{value.filename or key}"))
        return images, _form_deadline(form)
    finally:
        await form.close()


async def read_single(request: "Request") -> tuple[RawImage, float | None]:
    """Read the one image of ``/v1/detect`` and the deadline given in the body, if any.

    Raises:
        UnsupportedMediaType: not multipart, image/*, application/octet-stream or JSON.
        RequestError: a multipart body with no file, or with several.
        InvalidImageError: empty body, or invalid base64.
    """
    media = _media_type(request)
    if media == "multipart/form-data":
        images, deadline = await _form_files(request, max_files=1)
        if len(images) != 1:
            raise RequestError(f"send exactly one file (form field 'image'); got {len(images)}")
        return images[0], deadline
    if media == "application/json":
        req = _parse_json(DetectRequest, await request.body())
        return _raw_from_input(req, "base64"), req.deadline_s
    if media.startswith("image/") or media == "application/octet-stream":
        body = await request.body()
        if not body:
            raise InvalidImageError("the request body is empty; send the encoded image")
        return RawImage(body, None, "body"), None
    raise UnsupportedMediaType(
        f"Content-Type {media or '(none)'!r} is not accepted; send multipart/form-data (field 'image'), "
        "image/* or application/octet-stream bytes, or application/json with base64 'image'"
    )


async def read_batch(request: "Request", max_images: int) -> tuple[list[RawImage], float | None]:
    """Read the images of ``/v1/detect/batch`` (multipart files or JSON) and the body's deadline."""
    media = _media_type(request)
    if media == "multipart/form-data":
        images, deadline = await _form_files(request, max_files=max_images)
    elif media == "application/json":
        req = _parse_json(BatchDetectRequest, await request.body())
        images = [_raw_from_input(item, f"base64[{i}]") for i, item in enumerate(req.images)]
        deadline = req.deadline_s
    else:
        raise UnsupportedMediaType(
            f"Content-Type {media or '(none)'!r} is not accepted; send multipart/form-data with one file per "
            "image, or application/json {'images': [{'image': base64}, ...]}"
        )
    if not images:
        raise RequestError("the batch holds no image")
    if len(images) > max_images:
        raise RequestError(f"the batch holds {len(images)} images; the limit is {max_images}")
    return images, deadline


async def image_bytes(raw: RawImage, settings: "ServerSettings", *, end: float | None = None) -> bytes:
    """The encoded bytes of one input: as sent, from base64, or fetched (if a URL, and allowed) within
    the URL fetch timeout and the request's deadline (``end``, ``time.perf_counter()`` clock).

    Raises:
        InvalidImageError: empty, or invalid base64.
        UrlNotAllowed: URL inputs are off, or the URL points at a non-public address.
        UrlFetchFailed: the fetch failed or did not finish within its budget.
    """
    data = raw.data
    if raw.b64 is not None:
        data = decode_base64(raw.b64)
    if raw.url is not None:
        if not settings.allow_url_fetch:
            raise UrlNotAllowed("URL inputs are disabled on this server; send the image bytes or base64 instead "
                                "(the operator can enable them with WORKZONE_ALLOW_URL_FETCH=true)")
        total = settings.url_fetch_timeout_s
        if end is not None:
            total = min(total, max(0.0, end - time.perf_counter()))
        data = await fetch_image_bytes(raw.url, max_bytes=settings.max_body_bytes,
                                       timeout_s=settings.url_fetch_timeout_s, total_s=total)
    if not data:
        raise InvalidImageError(f"{raw.source}: the image is empty (0 bytes)")
    return data
