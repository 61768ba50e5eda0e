"""Prometheus metrics of one app, in the app's own CollectorRegistry (no global state).

Exposed at ``GET /metrics``:

* ``workzone_requests_total{endpoint,status}`` and ``workzone_request_latency_seconds{endpoint}``
* ``workzone_stage_latency_seconds{stage}``, ``workzone_stage_errors_total{stage}``
* ``workzone_exits_total{tier,reason}``: where images leave the cascade
* ``workzone_batch_size`` and ``workzone_queue_wait_seconds``: what the micro-batcher forms
* ``workzone_event_loop_lag_seconds``: how late a timer probe on the event loop ran (every request
  waits as long)
* ``workzone_queue_depth``, ``workzone_batch_running``, ``workzone_ready`` and
  ``workzone_breaker_state{stage,state}`` (1 for the current state), ``workzone_decoder_kills_total``,
  read at scrape time.
* ``workzone_held_bytes`` (bodies and reserved pixels, against ``max_held_bytes``),
  ``workzone_resident_bytes`` and ``workzone_resident_ceiling_bytes`` (``max_rss_bytes``; 0: none),
  ``workzone_inflight``: admission's state, read at scrape time.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from workzone._memory import resident_bytes
from workzone.server.admission import ENDPOINT_KEY, server_timing
from workzone.types import Decision

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from workzone.server.admission import Admission
    from workzone.service import DetectionService

__all__ = ["ServerMetrics", "MetricsMiddleware", "CONTENT_TYPE_LATEST"]

#: Seconds between two probes of the event loop's lag.
LOOP_PROBE_S = 0.05
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Collectors of one server; also the service's :class:`~workzone.service.ServiceObserver`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("workzone_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("workzone_request_latency_seconds", "HTTP request latency by endpoint",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram("workzone_stage_latency_seconds", "stage latency per image",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_errors = Counter("workzone_stage_errors", "stage failures and timeouts", ["stage"], registry=r)
        self.exits = Counter("workzone_exits", "images leaving the cascade, by tier and reason",
                             ["tier", "reason"], registry=r)
        self.batch_size = Histogram("workzone_batch_size", "images per cascade batch",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("workzone_queue_wait_seconds", "time the oldest job of a batch waited",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.loop_lag = Histogram("workzone_event_loop_lag_seconds", "how late a timer on the event loop ran "
                                  f"(a probe every {LOOP_PROBE_S * 1000:.0f} ms): every request waits as long",
                                  buckets=_LAG_BUCKETS, registry=r)

    async def probe_loop_lag(self) -> None:
        """Observe the event loop's lag every ``LOOP_PROBE_S`` until cancelled (the server's lifespan runs it)."""
        while True:
            t = time.perf_counter()
            await asyncio.sleep(LOOP_PROBE_S)
            self.loop_lag.observe(max(0.0, time.perf_counter() - t - LOOP_PROBE_S))

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answer (also those refused at the protocol layer, which no middleware sees)."""
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def bind_service(self, service: "DetectionService") -> None:
        """Expose the service's live state (queue depth, readiness, breakers) at scrape time."""
        self.registry.register(_ServiceCollector(service))

    def bind_admission(self, admission: "Admission") -> None:
        """Expose what admission holds (bytes, resident memory and its ceiling, requests) at scrape time."""
        self.registry.register(_AdmissionCollector(admission))

    # -- ServiceObserver --------------------------------------------------------------------------
    def on_batch(self, size: int, waited_s: float) -> None:
        self.batch_size.observe(size)
        self.queue_wait.observe(waited_s)

    def on_decision(self, decision: Decision) -> None:
        self.exits.labels(decision.exit_tier_name, decision.reason).inc()
        for rep in decision.stages:
            self.stage_latency.labels(rep.stage).observe(rep.latency_ms / 1000.0)
            if rep.error:
                self.stage_errors.labels(rep.stage).inc()

    # -- exposition -------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ServiceCollector(Collector):
    def __init__(self, service: "DetectionService") -> None:
        self.service = service

    def collect(self) -> Iterable[Any]:
        svc = self.service
        depth = GaugeMetricFamily("workzone_queue_depth", "images waiting for a batch")
        depth.add_metric([], svc.batcher.depth + svc.costly_batcher.depth)
        running = GaugeMetricFamily("workzone_batch_running", "images inside running batches")
        running.add_metric([], svc.batcher.running + svc.costly_batcher.running)
        ready = GaugeMetricFamily("workzone_ready", "1 when every stage is warmed up and work is accepted")
        ready.add_metric([], 1.0 if svc.ready else 0.0)
        breakers = GaugeMetricFamily("workzone_breaker_state", "circuit breaker state of remote stages "
                                     "(1 for the current state)", labels=["stage", "state"])
        for stage in svc.cascade.stages:
            breaker = getattr(stage, "breaker", None)
            state = getattr(breaker, "state", None) if breaker is not None else None
            if state is not None:
                breakers.add_metric([stage.name, str(getattr(state, "value", state))], 1.0)
        killed = CounterMetricFamily("workzone_decoder_kills", "decoder processes killed for passing a CPU budget "
                                     "or deadline (each replaced at once)")
        processes = getattr(getattr(svc, "decoder", None), "processes", None)
        killed.add_metric([], float(processes.killed if processes is not None else 0))
        yield from (depth, running, ready, breakers, killed)


class _AdmissionCollector(Collector):
    def __init__(self, admission: "Admission") -> None:
        self.admission = admission

    def collect(self) -> Iterable[Any]:
        adm = self.admission
        gauges = (("held_bytes", "request bodies and reserved pixels held now", adm.held_bytes),
                  ("resident_bytes", "resident memory of the server process", resident_bytes() or 0),
                  ("resident_ceiling_bytes", "resident memory at which detect requests are refused (0: none)",
                   (adm.memory.limit_bytes or 0) if adm.memory is not None else 0),
                  ("inflight", "detect requests admitted as work", adm.inflight))
        for name, doc, value in gauges:
            g = GaugeMetricFamily(f"workzone_{name}", doc)
            g.add_metric([], float(value))
            yield g


class MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them per route template; each answer tells
    its client the server's own time to the status line (``Server-Timing: app;dur=<ms>``: from the
    request reaching the app; ``read;dur=<ms>``: from the server reading its first bytes, so parsing and
    the event loop's delay before the app are in it; on a connection's first request ``accept;dur=<ms>``:
    from the connection's accept, so the client's own time to send its request is in it too).

    Pure ASGI (not BaseHTTPMiddleware) so streamed responses (SSE) pass through untouched; the
    endpoint label is the matched route's path template, so label cardinality stays bounded.
    """

    def __init__(self, app: "ASGIApp", metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: "Message") -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                # The server's own time to the status line (W3C Server-Timing): a client can tell it
                # from the network's and its own (a load generator on the same cores, for one).
                took = server_timing(scope, time.perf_counter(), start)
                message = {**message, "headers": [*message.get("headers", ()), (b"server-timing", took)]}
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(_endpoint_label(scope), status[0], time.perf_counter() - start)


def _endpoint_label(scope: "Scope") -> str:
    # The route template when the router recorded it (Starlette >= 0.41), else the handler's name;
    # never the raw path, which would let clients create unbounded label values.
    path = getattr(scope.get("route"), "path", None) or scope.get(ENDPOINT_KEY)  # refused before routing
    if path:
        return str(path)
    endpoint = scope.get("endpoint")
    return getattr(endpoint, "__name__", None) or "unmatched"
