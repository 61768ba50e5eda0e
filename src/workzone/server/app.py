"""Build the FastAPI app (``create_app``) and the uvicorn server around it (``create_server``).

The cascade is built once per app: its config is validated in :func:`create_app` (so a bad
pipeline file fails before anything listens), its stages load in the lifespan, in the background,
while ``/healthz`` already answers and ``/readyz`` says 503. Shutdown: stop accepting (503), let
uvicorn finish in-flight requests, drain the batcher's queue, close the stages.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

import workzone
from workzone.micro_batcher import BatchPolicy
from workzone.client_costs import ClientCosts
from workzone.io.images import ImageLimits
from workzone.server.admission import (Admission, AdmissionMiddleware, HeaderRefusal, RefusalLog,
                                       header_timeout_protocol)
from workzone.server.errors import register_exception_handlers
from workzone._loop import lower_priority_executor
from workzone._memory import (MemoryCeiling, fix_mmap_threshold, freeze_loaded_objects, limit_malloc_arenas,
                              release_free_memory)
from workzone.server.middleware import BodyLimitMiddleware
from workzone.server.metrics import MetricsMiddleware, ServerMetrics
from workzone.server.protocol import BatchDetectRequest, DetectRequest, ErrorResponse, TierEventModel
from workzone.server.routes import attach_routes
from workzone.io.decode_pool import DecodePool
from workzone.service import DetectionService, ImageDecoder
from workzone.server.settings import ServerSettings
from workzone.server.ui import attach_ui

__all__ = ["create_app", "create_server", "build_service", "default_rss_ceiling", "image_limits", "warn_if_exposed"]

log = logging.getLogger("workzone.server")

#: The least the default resident-memory ceiling allows beyond the loaded pipeline (a smaller byte budget
#: would put the ceiling within the noise of the resident size at rest).
_MIN_HEADROOM = 256 * 1024 * 1024


def default_rss_ceiling(settings: ServerSettings) -> int | None:
    """``max_rss_bytes`` as set; unset, None (set from the loaded pipeline's resident size, see
    ``MemoryCeiling.settle``) on the CPU and 0 (no ceiling) on a CUDA device: there the CUDA runtime, pinned
    buffers and ``torch.compile`` grow the resident size after loading by amounts no request holds, and the
    automatic ceiling was measured on the CPU only. Set ``WORKZONE_MAX_RSS_BYTES`` to have one on a GPU."""
    if settings.max_rss_bytes is None and settings.device.startswith("cuda"):
        return 0
    return settings.max_rss_bytes


def image_limits(settings: ServerSettings) -> ImageLimits:
    """The limits every image the server (and its engine) takes must respect."""
    return ImageLimits(max_bytes=settings.max_body_bytes, max_pixels=settings.max_image_pixels,
                       max_side=settings.max_image_side, max_decode_bytes=settings.max_decode_bytes)


def build_service(settings: ServerSettings, observer: Any = None) -> DetectionService:
    """The detection service described by ``settings`` (validates the pipeline; loads nothing)."""
    limits = image_limits(settings)
    policy = BatchPolicy(max_batch_size=settings.batch_size, max_wait_s=settings.batch_wait_ms / 1000.0,
                         max_queue=settings.queue_size, workers=settings.batch_workers,
                         retry_after_s=float(settings.retry_after_s))
    engine = settings.engine_process or settings.engine_address is not None
    attach = None
    if settings.engine_address is not None:
        from workzone.cascade_process import EngineAddress

        attach = EngineAddress(settings.engine_address, bytes.fromhex(settings.engine_key))
    # Untrusted bytes are decoded in processes the server can kill (started with the service).
    processes = (DecodePool(settings.decode_workers, limits, image_cpu_s=settings.image_decode_cpu_s,
                            heavy_s=settings.heavy_decode_s) if settings.decode_processes else None)
    return DetectionService.from_pipeline(settings.pipeline, device=settings.device, limits=limits, policy=policy,
                                          engine_process=engine, engine_attach=attach, gpu_decode=settings.gpu_decode,
                                          default_deadline_s=settings.default_deadline_s,
                                          max_deadline_s=settings.max_deadline_s, observer=observer,
                                          decode_workers=settings.decode_workers,
                                          decoder=ImageDecoder(settings.device, limits=limits, gpu_decode=settings.gpu_decode,
                                                               processes=processes, for_engine=engine),
                                          request_decode_cpu_s=settings.request_decode_cpu_s,
                                          client_costs=ClientCosts(settings.costly_image_s),
                                          memory=MemoryCeiling(default_rss_ceiling(settings), settings.max_held_bytes))


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The HTTP app for ``settings`` (read from the environment when omitted).

    Raises:
        ConfigError: the pipeline does not exist or does not validate.
    """
    settings = settings or ServerSettings()
    warn_if_exposed(settings)
    metrics = ServerMetrics()
    service = build_service(settings, observer=metrics)
    metrics.bind_service(service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_malloc_arenas(2)  # before the worker threads allocate: fewer arenas, less RSS kept after load
        if settings.malloc_mmap_threshold:  # decoded images in their own mappings, not fragmenting heaps
            fix_mmap_threshold(settings.malloc_mmap_threshold)
        if settings.compute_nice:  # before the stages load: their threads (and ONNX Runtime's) inherit it
            asyncio.get_running_loop().set_default_executor(lower_priority_executor(settings.compute_nice))

        def loaded(_: Any) -> None:
            # Once loaded, the pipeline's objects are never garbage: out of the collector's full walks.
            freeze_loaded_objects()
            release_free_memory()
            # What the loaded pipeline holds at rest plus the byte budget (at least 256 MiB). Not more: the
            # ceiling stops admissions, and the work already admitted (up to the byte budget again, plus each
            # batch's tensors) overshoots it until it ends; with the budget counted twice, the peak under 500
            # clients reached 1,064 MB on 2 cores, with it once at most 763 MB at as many answers
            # (benchmarks/results/reliability.md, "Memory under overload").
            service.memory.settle(max(settings.max_held_bytes, _MIN_HEADROOM))  # type: ignore[union-attr]

        service.start_in_background().add_done_callback(loaded)
        lag_probe = asyncio.ensure_future(metrics.probe_loop_lag())
        interval = sys.getswitchinterval()
        if settings.switch_interval_s is not None:  # process-wide: put back when the app stops
            sys.setswitchinterval(settings.switch_interval_s)
            log.info("GIL switch interval %.2g ms (was %.2g ms)", 1000 * settings.switch_interval_s, 1000 * interval)
        try:
            yield
        finally:
            lag_probe.cancel()
            log.info("shutting down: finishing %d queued image(s)", service.batcher.depth)
            try:
                await service.aclose(timeout=settings.shutdown_timeout_s)
            finally:
                sys.setswitchinterval(interval)

    app = FastAPI(
        title="workzone",
        version=workzone.__version__,
        summary="Is there road work in this image? A calibrated probability with the evidence behind it.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    app.state.admission = admission = Admission(settings.max_inflight, settings.max_held_bytes,
                                                float(settings.retry_after_s),
                                                max_uploads_per_client=settings.max_uploads_per_client,
                                                penalty_s=settings.refusal_penalty_s, memory=service.memory)
    metrics.bind_admission(admission)
    register_exception_handlers(app, default_retry_after=float(settings.retry_after_s))
    attach_routes(app)
    attach_ui(app)
    # Added last = outermost: metrics see every answer, including the body limit's 413s and the
    # admission's 429s, which are sent before any body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # One refusal log for the middleware and the protocol layer (HeaderRefusal): one rate limit.
    app.state.refusal_log = refusal_log = RefusalLog(settings.refusal_log_per_s)
    app.add_middleware(AdmissionMiddleware, service=service, admission=admission,
                       body_timeout_s=settings.body_timeout_s, refusal_log=refusal_log)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "X-Deadline-S", "Content-Type"])
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def warn_if_exposed(settings: ServerSettings) -> None:
    """Log a warning when the service listens beyond loopback without API keys."""
    if settings.api_keys or _is_loopback(settings.host):
        return
    log.warning("serving on %s without API keys: anyone who can reach this address can use the service; "
                "set WORKZONE_API_KEYS (or --api-key) or bind 127.0.0.1", settings.host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _openapi(app: FastAPI) -> dict[str, Any]:
    # The detect routes read their body by content type (multipart, raw, JSON), so FastAPI cannot
    # infer their JSON schemas; they are added here and referenced from each route's requestBody.
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (DetectRequest, BatchDetectRequest, TierEventModel, ErrorResponse):
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        comps.update(js.pop("$defs", {}))
        comps[model.__name__] = js
    app.openapi_schema = schema
    return schema


def create_server(settings: ServerSettings, app: FastAPI | None = None, **config: Any) -> "Any":
    """A uvicorn server for ``app`` whose shutdown signal first makes the service refuse new work.

    Extra keyword arguments go to ``uvicorn.Config`` (tests pass ``lifespan="on"`` etc.).
    """
    import uvicorn

    app = app or create_app(settings)
    service: DetectionService = app.state.service

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Runs in the signal handler (or another thread in tests): hop onto the loop.
            loop = getattr(self, "_workzone_loop", None)
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(service.begin_shutdown)
            super().handle_exit(sig, frame)

        async def serve(self, sockets: Any = None) -> None:
            self._workzone_loop = asyncio.get_running_loop()
            await super().serve(sockets=sockets)

    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    # Refusals decided from the headers are answered by the protocol, before an ASGI task exists.
    refusal = HeaderRefusal(service, app.state.admission, app.state.refusal_log, app.state.metrics.observe_request)
    config.setdefault("http", header_timeout_protocol(AutoHTTPProtocol, settings.header_timeout_s,
                                                      settings.max_header_bytes, refusal))
    cfg = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                         timeout_graceful_shutdown=int(settings.shutdown_timeout_s) or None, **config)
    return _Server(cfg)
