"""Admission before work, and read timeouts: an overloaded server answers in milliseconds.

:class:`AdmissionMiddleware` sits in front of the detect routes. Before a body is read it refuses
with 503 (not ready, shutting down) or 429 (too many requests in flight, or too many bytes held)
and stamps the request's arrival time, so that reading, decoding and queueing all count against
its deadline. While the body streams it enforces the body read timeout (408) and counts the bytes
against the memory budget; decoded pixels are charged to the same budget by the routes
(:func:`charge`); everything a request held is released when its response is sent.

:func:`header_timeout_protocol` gives uvicorn a protocol class that answers 408 and closes a
connection whose request headers do not arrive within the header timeout (slow-loris clients).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workzone.errors import Overloaded, RequestTimeout, ShuttingDown

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from workzone.service import DetectionService

__all__ = ["Admission", "AdmissionMiddleware", "arrival_time", "charge", "header_timeout_protocol", "GUARDED_PATHS",
           "ENDPOINT_KEY"]

_ARRIVED = "workzone.arrived"
_HELD = "workzone.held"
GUARDED_PATHS = frozenset({"/v1/detect", "/v1/detect/batch", "/v1/detect/stream"})
#: Scope key naming the endpoint of a request refused before routing (for the metrics label).
ENDPOINT_KEY = "workzone.endpoint"
_WAIT_SHARE = 0.5  # of a deadline that queueing may use; the rest is for decoding and the cascade


@dataclass
class Admission:
    """Live counters of admitted detect requests and the bytes they hold.

    Attributes:
        max_inflight: requests admitted at once.
        max_held_bytes: bytes (bodies + decoded pixels) held at once before new requests are refused.
        retry_after_s: what refused callers are told to wait.
    """

    max_inflight: int
    max_held_bytes: int
    retry_after_s: float = 1.0
    inflight: int = 0
    held_bytes: int = 0
    refused: int = 0

    def check(self, expected_wait_s: float = 0.0, deadline_s: float | None = None) -> None:
        """Raise :class:`Overloaded` when one more request must not be admitted: the in-flight or
        memory limit is reached, or the work already admitted would take more than half the
        request's deadline (it could not be answered in time: better refused now than late)."""
        late = deadline_s is not None and expected_wait_s > _WAIT_SHARE * deadline_s
        if self.inflight >= self.max_inflight or self.held_bytes >= self.max_held_bytes or late:
            self.refused += 1
            raise Overloaded(self.inflight, self.max_inflight, self.retry_after_s)


def arrival_time(request: "Request") -> float:
    """When the request arrived (``time.perf_counter()`` clock); now for requests the middleware skipped."""
    return float(request.scope.get(_ARRIVED, time.perf_counter()))


def charge(request: "Request", nbytes: int) -> None:
    """Count ``nbytes`` (decoded pixels) against the memory budget until the response is sent."""
    held = request.scope.get(_HELD)
    if held is not None:
        held[1].held_bytes += nbytes
        held[0] += nbytes


class AdmissionMiddleware:
    """Refuses detect requests before their body is read when the service cannot take them.

    Args:
        app: the ASGI app.
        service: the detection service (readiness, shutdown).
        admission: the shared counters and limits.
        body_timeout_s: longest wait for the next body chunk.
    """

    def __init__(self, app: "ASGIApp", service: "DetectionService", admission: Admission,
                 body_timeout_s: float) -> None:
        self.app = app
        self.service = service
        self.admission = admission
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[_ARRIVED] = time.perf_counter()
        if scope.get("method") != "POST" or scope.get("path") not in GUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            if not self.service.batcher.accepting and self.service.state not in ("created", "starting", "failed"):
                raise ShuttingDown(retry_after_s=self.admission.retry_after_s)
            self.service.check_ready()
            deadline = self.service.resolve_deadline(_header_deadline(scope))
            self.admission.check(self.service.expected_wait_s(self.admission.inflight), deadline)
        except Exception as exc:  # noqa: BLE001 - NotReady, ShuttingDown, Overloaded: answered before the body
            from workzone.server.errors import error_response

            scope[ENDPOINT_KEY] = scope["path"]
            await error_response(exc, self.admission.retry_after_s)(scope, receive, send)
            return
        held = [0, self.admission]
        scope[_HELD] = held
        self.admission.inflight += 1
        body_done = False

        async def timed_receive() -> "Message":
            nonlocal body_done
            if body_done:  # after the body, receive only waits for a disconnect: no timeout
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=self.body_timeout_s)
            except asyncio.TimeoutError:
                raise RequestTimeout(f"the request body did not arrive within {self.body_timeout_s:g} s") from None
            if message["type"] == "http.request":
                n = len(message.get("body", b""))
                held[0] += n
                self.admission.held_bytes += n
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        try:
            await self.app(scope, timed_receive, send)
        finally:
            self.admission.inflight -= 1
            self.admission.held_bytes -= held[0]


def _header_deadline(scope: "Scope") -> float | None:
    for key, value in scope.get("headers") or ():
        if key == b"x-deadline-s":
            try:
                v = float(value)
            except ValueError:
                return None  # the route refuses it with 400
            return v if 0 < v < float("inf") else None
    return None


def header_timeout_protocol(base: type, timeout_s: float) -> type:
    """A subclass of uvicorn's HTTP protocol ``base`` that closes connections whose request headers
    do not arrive within ``timeout_s`` (answering 408 when part of a request was sent)."""

    class HeaderTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        _wz_timer: asyncio.TimerHandle | None = None
        _wz_cycle: Any = None
        _wz_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._wz_arm()

        def data_received(self, data: bytes) -> None:
            self._wz_bytes += len(data)
            super().data_received(data)
            if self._wz_timer is not None and getattr(self, "cycle", None) is not self._wz_cycle:
                self._wz_timer.cancel()  # a new request's headers are complete
                self._wz_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._wz_arm()  # the next request on this keep-alive connection gets the same budget

        def connection_lost(self, exc: Exception | None) -> None:
            if self._wz_timer is not None:
                self._wz_timer.cancel()
            super().connection_lost(exc)

        def _wz_arm(self) -> None:
            if self._wz_timer is not None:
                self._wz_timer.cancel()
            self._wz_cycle = getattr(self, "cycle", None)
            self._wz_bytes = 0
            self._wz_timer = self.loop.call_later(timeout_s, self._wz_expire)

        def _wz_expire(self) -> None:
            self._wz_timer = None
            if self.transport.is_closing() or getattr(self, "cycle", None) is not self._wz_cycle:
                return
            if self._wz_bytes:
                self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

    return HeaderTimeoutProtocol


_TIMEOUT_BODY = (b'{"error":{"type":"request_timeout","message":"the request headers did not arrive in time",'
                 b'"status":408}}')
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     + f"content-length: {len(_TIMEOUT_BODY)}\r\n\r\n".encode() + _TIMEOUT_BODY)
