"""Thin HTTP handlers: read the request, call the service, shape the answer.

Handlers take the service and the settings from ``request.app.state``; every error is raised and
mapped in :mod:`workzone.server.errors`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import secrets
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.responses import Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from workzone.answer import public_answer
from workzone.cascade import TierEvent
from workzone.errors import DeadlineExceeded, DecodeBudgetExceeded, InvalidImageError, Overloaded, Unauthorized
from workzone.io.images import ImageHeader
from workzone.server.admission import arrival_time, client_group, reserve, working_memory
from workzone.server.errors import error_body, error_status, public_message
from workzone.server.inputs import RawImage, deadline_header, image_bytes, read_batch, read_single
from workzone.server.protocol import (
    BatchDetectRequest,
    BatchDetectResponse,
    DecisionResponse,
    DetectRequest,
    ErrorResponse,
    HealthResponse,
    PipelineResponse,
    ReadyResponse,
)
from workzone.service import DetectionService, answer_by
from workzone.server.settings import ServerSettings

__all__ = ["attach_routes"]

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of the server's API keys")
_bearer = HTTPBearer(auto_error=False, description="one of the server's API keys as a bearer token")


async def require_api_key(request: Request, key: str | None = Security(_api_key),
                          bearer: HTTPAuthorizationCredentials | None = Security(_bearer)) -> None:
    """Accept the request when no keys are configured, or when it carries one of them."""
    keys = _settings(request).api_keys
    if not keys:
        return
    given = key or (bearer.credentials if bearer is not None else None)
    if not _key_accepted(given, keys):
        raise Unauthorized("a valid API key is required: send it as X-API-Key or Authorization: Bearer <key>")


def _key_accepted(given: str | None, keys: tuple[str, ...]) -> bool:
    # compare_digest against every key: the time taken does not reveal which prefix matched.
    return bool(given) and any(secrets.compare_digest(given.encode(), k.encode()) for k in keys)  # type: ignore[union-attr]


def _authenticated(request: Request) -> bool:
    """The caller sent a valid key (never true on a server without keys: details stay in its log)."""
    auth = request.headers.get("authorization", "")
    given = request.headers.get("x-api-key") or (auth[7:].strip() if auth.lower().startswith("bearer ") else None)
    return _key_accepted(given, _settings(request).api_keys)


def _service(request: Request) -> DetectionService:
    return request.app.state.service


def _settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def _content(schema_ref: str, *, raw: bool, multi: bool) -> dict[str, Any]:
    file_prop = ({"images": {"type": "array", "items": {"type": "string", "format": "binary"}}} if multi
                 else {"image": {"type": "string", "format": "binary"}})
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            **file_prop, "deadline_s": {"type": "number", "description": "deadline in seconds"}}}},
    }
    if raw:
        binary = {"schema": {"type": "string", "format": "binary"}}
        content["image/*"] = binary
        content["application/octet-stream"] = binary
    return {"requestBody": {"required": True, "content": content}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in {
        401: "missing or wrong API key", 403: "URL input refused", 413: "body too large",
        415: "content type not accepted", 422: "not a decodable image, or invalid fields",
        429: "queue full; retry after Retry-After seconds", 503: "not ready or shutting down; see Retry-After",
    }.items()
}

router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)


@router.get("/healthz", response_model=HealthResponse, tags=["ops"], summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers (does not mean the pipeline is loaded)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyResponse, tags=["ops"], summary="Readiness",
            responses={503: {"model": ReadyResponse, "description": "not ready"}})
async def readyz(request: Request) -> Response:
    """200 once every stage is loaded and warmed up and work is accepted; 503 before and while stopping."""
    svc = _service(request)
    # The load error names model paths and environment variables: only authenticated callers see it.
    load_error = svc.load_error if _authenticated(request) else None
    body = ReadyResponse(ready=svc.ready, state=svc.state, load_error=load_error)
    headers = {} if svc.ready else {"Retry-After": str(_settings(request).retry_after_s)}
    return Response(body.model_dump_json(), status_code=200 if svc.ready else 503,
                    media_type="application/json", headers=headers)


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {}}, "description": "text exposition format"}})
async def metrics(request: Request) -> Response:
    """Requests, latencies per endpoint and stage, exits per tier, batch sizes, queue depth, breakers."""
    payload, content_type = request.app.state.metrics.render()
    return Response(payload, media_type=content_type)


@v1.get("/pipeline", response_model=PipelineResponse, tags=["pipeline"], summary="Describe the pipeline")
async def pipeline(request: Request) -> dict[str, Any]:
    """Tiers, stages with their parameters, fusion and exit thresholds, and the service state."""
    described = _service(request).describe()
    if not _authenticated(request):
        described["load_error"] = None
    return described


@v1.post("/detect", response_model=DecisionResponse, tags=["detect"], summary="Decide one image",
         openapi_extra=_content("DetectRequest", raw=True, multi=False))
async def detect(request: Request) -> dict[str, Any]:
    """One image as a multipart upload (field ``image``), raw bytes (``image/*`` or
    ``application/octet-stream``), or JSON with base64. Returns P(road work), the label and the
    evidence of every stage that ran. The deadline comes from ``X-Deadline-S`` or ``deadline_s``."""
    svc = _service(request)
    raw, body_deadline = await read_single(request)
    deadline = svc.resolve_deadline(deadline_header(request) or body_deadline)
    arrived = arrival_time(request)
    try:
        (image,) = await _load(request, [raw], deadline)
    except DeadlineExceeded:
        return public_answer(svc.prior_decision(raw.source, "the deadline passed before the image was decoded"))
    decision = await svc.detect(image, deadline_s=deadline, arrived_at=arrived,  # type: ignore[arg-type]
                                client=client_group(request.scope))
    return public_answer(decision)


@v1.post("/detect/batch", response_model=BatchDetectResponse, tags=["detect"], summary="Decide many images",
         openapi_extra=_content("BatchDetectRequest", raw=False, multi=True))
async def detect_batch(request: Request) -> dict[str, Any]:
    """Many images in one call (multipart files, or JSON ``images``). An image that cannot be read
    gets its own error in ``results``; the others are still decided. The whole batch is refused at
    once when it would pass the memory budget (429, from the images' headers), when its images
    together pass the request's decode budget (422), or when none of its images can be read (422)."""
    svc, settings = _service(request), _settings(request)
    raws, body_deadline = await read_batch(request, settings.max_batch_images)
    deadline = svc.resolve_deadline(deadline_header(request) or body_deadline)
    arrived = arrival_time(request)
    loaded = await _load(request, raws, deadline, batch=True)
    results: list[dict[str, Any]] = [{"index": i} for i in range(len(raws))]
    ok = [i for i, x in enumerate(loaded) if not isinstance(x, BaseException)]
    for i, x in enumerate(loaded):
        if isinstance(x, DeadlineExceeded):
            why = "the deadline passed before the image was decoded"
            results[i]["decision"] = public_answer(svc.prior_decision(raws[i].source, why))
        elif isinstance(x, BaseException):
            status, kind = error_status(x)
            results[i]["error"] = error_body(status, kind, public_message(x))["error"]
    if not ok and all(isinstance(x, InvalidImageError) for x in loaded):
        raise InvalidImageError(f"none of the batch's {len(raws)} image(s) could be read; the first: "
                                f"{public_message(loaded[0])}")  # type: ignore[arg-type]
    if ok:
        decisions = await svc.detect_many([loaded[i] for i in ok], deadline_s=deadline,  # type: ignore[misc]
                                          arrived_at=arrived, client=client_group(request.scope))
        for i, d in zip(ok, decisions):
            results[i]["decision"] = public_answer(d)
    return {"results": results}


async def _load(request: Request, raws: list[RawImage], deadline: float | None, batch: bool = False) -> list[Any]:
    """Fetch and decode a request's inputs within its deadline and its decode budget: every image's
    header is read first and its pixels are reserved against the memory budget (all images of the
    request at once) before any pixel is decoded; what each decode needs beyond its pixels is taken
    from the same budget while it runs.

    Returns:
        Per input, the decoded image or the exception that input raised (``InvalidImageError``,
        ``DeadlineExceeded``, a URL error) when ``batch``; otherwise the one input's exception is raised.

    Raises:
        Overloaded: the request's pixels would pass the memory budget.
        DecodeBudgetExceeded: the request's images together ran past its decode budget.
    """
    svc, settings = _service(request), _settings(request)
    end = answer_by(arrival_time(request), deadline)  # a prior answered at `end` is still on time
    budget = svc.decode_budget()

    async def head(raw: RawImage) -> tuple[bytes, ImageHeader]:
        data = await image_bytes(raw, settings, end=end)
        return data, await svc.probe(data, raw.source, end=end, budget=budget)

    heads = await asyncio.gather(*(head(r) for r in raws), return_exceptions=True)
    _raise_request_wide(heads, single=not batch)
    good = [h[1] for h in heads if not isinstance(h, BaseException)]
    # The pixels are held until the answer; what a decode needs beyond them, only while it runs.
    reserve(request, sum(h.out_bytes for h in good), max((_beyond(h) for h in good), default=0))

    async def body(raw: RawImage, h: Any) -> Any:
        if isinstance(h, BaseException):
            raise h
        return await svc.decode(h[0], raw.source, end=end, budget=budget, cost_s=h[1].cost_s,
                                memory=functools.partial(working_memory, request, _beyond(h[1])))

    loaded = await asyncio.gather(*(body(r, h) for r, h in zip(raws, heads)), return_exceptions=True)
    _raise_request_wide(loaded, single=not batch)
    return loaded


def _beyond(header: ImageHeader) -> int:
    """Bytes a decode of ``header``'s image needs beyond its pixels."""
    return max(0, header.work_bytes - header.out_bytes)


def _raise_request_wide(results: list[Any], single: bool) -> None:
    """Raise what fails the whole request: cancellation, the request's decode budget, or (for a
    single input) that input's error."""
    for x in results:
        if isinstance(x, BaseException) and (not isinstance(x, Exception) or single or isinstance(x, Overloaded)
                                             or isinstance(x, DecodeBudgetExceeded) and x.whole_request):
            raise x


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@v1.post("/detect/stream", tags=["detect"], summary="Decide one image, streaming each tier (SSE)",
         openapi_extra=_content("DetectRequest", raw=True, multi=False),
         responses={200: {"content": {"text/event-stream": {}},
                          "description": "`event: tier` per tier (TierEventModel), then `event: decision` "
                                         "(DecisionResponse), or `event: error` (ErrorDetail)"}})
async def detect_stream(request: Request) -> StreamingResponse:
    """Same inputs as ``/v1/detect``; answers Server-Sent Events: one ``tier`` event after each tier
    the image went through (fused probability so far, stages run, cost so far), then the final
    ``decision``. Queue and input errors are ordinary HTTP errors, sent before the stream starts."""
    svc = _service(request)
    raw, body_deadline = await read_single(request)
    deadline = svc.resolve_deadline(deadline_header(request) or body_deadline)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    try:
        (image,) = await _load(request, [raw], deadline)
    except DeadlineExceeded:  # as /v1/detect: the prior, marked degraded (not a 504)
        prior = svc.prior_decision(raw.source, "the deadline passed before the image was decoded")
        return StreamingResponse(iter([_sse("decision", public_answer(prior))]), media_type="text/event-stream",
                                 headers=headers)
    events: asyncio.Queue[TierEvent] = asyncio.Queue()
    (future,) = svc.submit([image], deadline_s=deadline, on_event=events.put_nowait, arrived_at=arrival_time(request),
                           client=client_group(request.scope))
    return StreamingResponse(_stream(future, events), media_type="text/event-stream", headers=headers)


async def _stream(future: asyncio.Future, events: asyncio.Queue[TierEvent]) -> AsyncIterator[bytes]:
    try:
        while not future.done():
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield _sse("tier", _event_dict(getter.result()))
            else:
                getter.cancel()
        while not events.empty():  # tier events always precede the decision
            yield _sse("tier", _event_dict(events.get_nowait()))
        try:
            decision = future.result()
        except Exception as exc:  # noqa: BLE001 - the status line is sent: report in-band
            status, kind = error_status(exc)
            yield _sse("error", error_body(status, kind, public_message(exc))["error"])
        else:
            yield _sse("decision", public_answer(decision))
    finally:
        if not future.done():  # the client went away: do not run its image
            future.cancel()


def _event_dict(ev: TierEvent) -> dict[str, Any]:
    d = dataclasses.asdict(ev)
    d.pop("index", None)
    d["stages"] = list(d["stages"])
    return d


def attach_routes(app: FastAPI) -> None:
    """Mount every route on ``app`` (the JSON request models are added to the OpenAPI components)."""
    app.include_router(router)
    app.include_router(v1)
    _ = (DetectRequest, BatchDetectRequest)  # referenced by openapi_extra; see app._openapi
