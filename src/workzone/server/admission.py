"""Admission before work, and read budgets: an overloaded server answers in milliseconds.

:class:`AdmissionMiddleware` sits in front of the detect routes. Before a body is read it refuses
with 503 (not ready, shutting down) or 429 (too many requests in flight, too many bytes held, or
too many bodies still arriving from the same client address) and stamps the request's arrival
time, so that reading, decoding and queueing all count against its deadline.

A body that is still arriving is not queued work: it counts only against its client's upload limit
(``max_uploads_per_client``), and it must arrive whole within the body budget (the smaller of
``body_timeout_s`` and the request's deadline) or the request is answered 408. Once the whole body
is in, the request is admitted again as work (429 if the work admitted meanwhile leaves no room).
A client address whose images keep being refused (more than ``free_strikes`` 422s, or 429s because
its own images' memory could not be reserved and they alone need more than an eighth of the budget,
within ``strike_window_s``) has each further request
held ``penalty_s`` before any work: refusing is cheap, but a client sending bombs back to back would
otherwise take the CPU by sheer rate.
Body bytes count against the memory budget as they arrive; decoded pixels are reserved from each
image's header before it is decoded (:func:`reserve`), and what a decoder needs beyond them while it
decodes from the moment it starts to when it ends (:func:`working_memory`); everything a request
held is released when its response is sent.

:func:`header_timeout_protocol` gives uvicorn a protocol class that answers 408 and closes a
connection whose request headers do not arrive within the header timeout (slow-loris clients), and
431 when they pass the header size limit.

Every 429 and 503 a detect route answers is logged on one line (logger ``workzone.access``): the
status, the error type, the client address, the method and path (never the query string, which
may carry secrets), and the server's own reason (which limit refused it). :class:`RefusalLog` keeps
an attack from flooding the log: at most ``per_s`` lines a second, and the next line says how many
refusals were not logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Iterator

from workzone._memory import MemoryCeiling
from workzone.errors import InvalidImageError, NotReady, Overloaded, RequestTimeout, ShuttingDown
from workzone.server.errors import REFUSAL_KEY

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from workzone.service import DetectionService

__all__ = ["Admission", "AdmissionMiddleware", "HeaderRefusal", "RefusalLog", "check_before_body", "server_timing",
           "arrival_time", "reserve", "working_memory", "client_group", "header_timeout_protocol", "GUARDED_PATHS", "ENDPOINT_KEY", "ACCEPTED_KEY", "READ_KEY"]

access_log = logging.getLogger("workzone.access")

_ARRIVED = "workzone.arrived"
#: Scope keys set by the protocol (``time.perf_counter()``): when the request's connection was accepted
#: (its first request only), and when the server read the request's first bytes.
ACCEPTED_KEY = "workzone.accepted"
READ_KEY = "workzone.read"
_HELD = "workzone.held"
_EXPECTED = "workzone.expected"  # the protocol layer let it through and counts it as upcoming (Admission.expect)
_STRIKE = "workzone.strike"  # the request's own images could not be reserved (429): counted as a 422 is
GUARDED_PATHS = frozenset({"/v1/detect", "/v1/detect/batch", "/v1/detect/stream"})
#: Scope key naming the endpoint of a request refused before routing (for the metrics label).
ENDPOINT_KEY = "workzone.endpoint"
_BODY_FLOOR_S = 0.01
_FRESH_S = 0.25  # an upload counts as upcoming work for 0.25 to 0.5 s after its headers
_WAIT_SHARE = 0.5  # of a deadline that queueing may use; the rest is for decoding and the cascade
_STRIKE_SHARE = 8  # a request refused for memory is a strike when it alone needs 1/8 of the budget


@dataclass
class Admission:
    """Live counters of admitted detect requests, the bodies still arriving and the bytes they hold.

    Attributes:
        max_inflight: requests admitted as work at once (their body has arrived).
        max_held_bytes: bytes (bodies + reserved pixels) held at once before new requests are refused.
        retry_after_s: what refused callers are told to wait.
        max_uploads_per_client: bodies one client address may be sending at once.
        free_strikes: requests a client address may have refused for their images (422: unreadable or
            too costly; 429: their memory could not be reserved) within ``strike_window_s`` before its
            requests are held ``penalty_s`` before any work.
        strike_window_s: the window those refusals are counted in.
        penalty_s: how long such a client's requests wait (0: no penalty).
        memory: the process's resident-memory ceiling: at or above it new requests are refused while
            any other request is held (with none held, refusing would free nothing: one is admitted,
            so the service never stops answering). It bounds what the byte budget does not count:
            the cascade's working set, the allocator's free space, buffers.
    """

    max_inflight: int
    max_held_bytes: int
    retry_after_s: float = 1.0
    max_uploads_per_client: int = 16
    free_strikes: int = 5
    strike_window_s: float = 10.0
    penalty_s: float = 1.0
    memory: MemoryCeiling | None = None
    inflight: int = 0
    held_bytes: int = 0
    refused: int = 0
    uploads: dict[str, int] = field(default_factory=dict)
    strikes: dict[str, deque[float]] = field(default_factory=dict)
    #: Bodies arriving that began within the last one or two ``_FRESH_S`` windows, by window.
    fresh: dict[int, int] = field(default_factory=dict)

    def upcoming(self) -> int:
        """Requests admitted from their headers moments ago whose body is still arriving: about to be
        work. A burst of requests all pass a check that counts only the work admitted so far, and then
        are refused one by one as their bodies arrive; counting these refuses them from the headers.
        Bodies arriving for longer (slow uploads) are not counted: they are not about to be work."""
        now = int(time.monotonic() / _FRESH_S)
        return self.fresh.get(now, 0) + self.fresh.get(now - 1, 0)

    def check(self, expected_wait_s: float = 0.0, deadline_s: float | None = None, own_bytes: int = 0) -> None:
        """Raise :class:`Overloaded` when one more request must not be admitted: the in-flight limit,
        the byte budget or the resident-memory ceiling is reached, or the work already admitted would
        take more than half the request's deadline (it could not be answered in time: better refused
        now than late).
        ``own_bytes`` are the request's own bytes already counted in ``held_bytes`` (its body): not
        other work, which alone makes the memory ceiling refuse."""
        late = deadline_s is not None and expected_wait_s > _WAIT_SHARE * deadline_s
        if self.inflight >= self.max_inflight:
            self._refuse(f"{self.inflight} requests in flight, the limit (WORKZONE_MAX_INFLIGHT)")
        if self.held_bytes >= self.max_held_bytes:
            self._refuse(f"{self.held_bytes / 2**20:.0f} MiB held of {self.max_held_bytes / 2**20:.0f} MiB "
                         "(WORKZONE_MAX_HELD_BYTES)")
        others = self.inflight or self.held_bytes > own_bytes
        rss = None if self.memory is None or not others else self.memory.passed()
        if rss is not None:
            ceiling = (self.memory.limit_bytes or 0) / 2**20  # type: ignore[union-attr]
            self._refuse(f"the server's resident memory is {rss / 2**20:.0f} MiB, at or above its ceiling of "
                         f"{ceiling:.0f} MiB (WORKZONE_MAX_RSS_BYTES)")
        if late:
            self._refuse(f"the work admitted would take {expected_wait_s:.2f} s, more than half the request's "
                         f"{deadline_s:g}-s deadline")

    def begin_upload(self, client: str) -> int:
        """Count one more body arriving from ``client``; :class:`Overloaded` past its limit.

        Returns:
            The token to give back to :meth:`end_upload`.
        """
        n = self.uploads.get(client, 0)
        if n >= self.max_uploads_per_client:
            self._refuse(f"{n} bodies arriving from this client address, the limit (WORKZONE_MAX_UPLOADS_PER_CLIENT)")
        self.uploads[client] = n + 1
        return self.expect()

    def end_upload(self, client: str, token: int) -> None:
        n = self.uploads.get(client, 0) - 1
        if n > 0:
            self.uploads[client] = n
        else:
            self.uploads.pop(client, None)
        self.unexpect(token)

    def expect(self) -> int:
        """Count one more request as upcoming work (:meth:`upcoming`); returns the token for :meth:`unexpect`.
        The protocol layer (:class:`HeaderRefusal`) counts each request it lets through until its ASGI
        task reaches the middleware: the headers of a burst are parsed in one loop turn, before any of
        their tasks runs, and each must see the others."""
        window = int(time.monotonic() / _FRESH_S)
        for old in [w for w in self.fresh if w < window - 1]:
            del self.fresh[old]
        self.fresh[window] = self.fresh.get(window, 0) + 1
        return window

    def unexpect(self, token: int) -> None:
        if self.fresh.get(token, 0) > 0:  # still a fresh window: no longer upcoming
            self.fresh[token] -= 1

    def strike(self, client: str) -> None:
        """Record that ``client`` sent an image that was refused as unreadable or too costly (or whose
        memory could not be reserved)."""
        now = time.monotonic()
        if len(self.strikes) > 10_000:  # many addresses: forget the quiet ones
            for key in [k for k, q in self.strikes.items() if not q or now - q[-1] > self.strike_window_s]:
                del self.strikes[key]
        held = self.penalty(client) > 0
        q = self.strikes.setdefault(client, deque(maxlen=self.free_strikes + 1))
        q.append(now)
        if not held and self.penalty(client):  # once per onset, so the log says why a client slowed down
            access_log.warning("penalised: client=%s had %d requests refused for their images within %g s; each "
                               "further request is held %g s", client, len(q), self.strike_window_s, self.penalty_s)

    def penalty(self, client: str) -> float:
        """Seconds ``client``'s next request waits: ``penalty_s`` once it has more than ``free_strikes``
        refusals within the window, else 0. A client sending bombs back to back then sends one a
        second, however fast they are refused."""
        q = self.strikes.get(client)
        if not self.penalty_s or q is None or len(q) <= self.free_strikes:
            return 0.0
        return self.penalty_s if time.monotonic() - q[0] < self.strike_window_s else 0.0

    def _refuse(self, reason: str) -> None:
        self.refused += 1
        raise Overloaded(self.inflight, self.max_inflight, self.retry_after_s, reason)


@dataclass
class RefusalLog:
    """One warning line per refused request, at most ``per_s`` lines a second (a token bucket holding
    one second's worth); the refusals past it are counted, and the next line logged says how many.

    Attributes:
        per_s: most lines a second (0: none are logged).
        logger: where the lines go.
    """

    per_s: float = 2.0
    logger: logging.Logger = access_log
    suppressed: int = 0
    _tokens: float = -1.0
    _at: float = 0.0

    def refused(self, status: int, kind: str, client: str, scope: "Scope", reason: str) -> bool:
        """Log the refusal of ``scope``'s request unless over the rate; returns whether it was logged."""
        if self.per_s <= 0:
            return False
        now = time.monotonic()
        burst = max(1.0, self.per_s)
        self._tokens = burst if self._tokens < 0 else min(burst, self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return False
        self._tokens -= 1.0
        more = f" ({self.suppressed} more refusals not logged since the last line)" if self.suppressed else ""
        self.suppressed = 0
        # The path without its query string: a query may carry a key.
        self.logger.warning("refused %d %s client=%s %s %s: %s%s", status, kind, client, scope.get("method", "-"),
                            scope.get("path", "-"), reason.replace("\n", " ")[:300], more)
        return True


def arrival_time(request: "Request") -> float:
    """When the request arrived (``time.perf_counter()`` clock); now for requests the middleware skipped."""
    return float(request.scope.get(_ARRIVED, time.perf_counter()))


def reserve(request: "Request", nbytes: int, working: int = 0) -> None:
    """Count ``nbytes`` (pixels about to be decoded) against the memory budget until the response is
    sent; ``working`` is the most a decode of the request needs beyond its pixels (taken while it
    runs, :func:`working_memory`): a request whose pixels and largest decode together pass the whole
    budget can never be served. Single and batch requests draw on the same budget.

    Raises:
        Overloaded: the budget would be passed now; nothing has been decoded yet.
        InvalidImageError: the request alone needs more than the whole budget (retrying cannot help).
    """
    held = request.scope.get(_HELD)
    if held is None:
        return
    admission: Admission = held[1]
    if nbytes + working > admission.max_held_bytes:
        raise InvalidImageError(f"the request's images need {(nbytes + working) / 2**20:.0f} MiB once decoded (and "
                                f"while decoding); this server holds at most {admission.max_held_bytes / 2**20:.0f} "
                                "MiB: send fewer or smaller images")
    held[0] += nbytes
    admission.held_bytes += nbytes
    if admission.held_bytes > admission.max_held_bytes:
        _refuse_for_its_images(request, admission, held[0] + working)


@contextlib.contextmanager
def working_memory(request: "Request", nbytes: int) -> Iterator[None]:
    """Hold ``nbytes`` of the memory budget while one of the request's images decodes (what the decoder
    needs beyond the pixels :func:`reserve` counted); taken when a decoder is ready to start on it,
    so images waiting for a decoder hold nothing.

    Raises:
        Overloaded: the budget cannot give it now (nothing is decoded).
    """
    held = request.scope.get(_HELD)
    if held is None or nbytes <= 0:
        yield
        return
    admission: Admission = held[1]
    if admission.held_bytes + nbytes > admission.max_held_bytes:
        _refuse_for_its_images(request, admission, held[0] + nbytes)
    admission.held_bytes += nbytes
    try:
        yield
    finally:
        admission.held_bytes -= nbytes


def _refuse_for_its_images(request: "Request", admission: Admission, need: int) -> None:
    # A strike for its client, as a 422 is: a client sending large images back to back, each refused
    # in milliseconds, would otherwise keep the server busy refusing them by sheer rate. Only when the
    # request alone needs more than an eighth of the budget (``need``: its bytes and its largest decode;
    # a 24-MP WebP needs over 100 MiB, a 1920x1080 JPEG 24 MiB of the default 256): an ordinary image
    # refused because the server is full is the server's overload, not its client's doing.
    if need * _STRIKE_SHARE > admission.max_held_bytes:
        request.scope[_STRIKE] = True
    admission._refuse(f"the request's images need memory that the budget cannot give now "
                      f"({admission.held_bytes / 2**20:.0f} MiB held of {admission.max_held_bytes / 2**20:.0f} MiB)")


def client_group(scope: "Scope") -> str:
    """The client address a request's upload counts against: IPv4 as is, IPv6 by its /64 (one host
    usually holds a whole /64)."""
    client = scope.get("client")
    host = str(client[0]) if client else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return host


class AdmissionMiddleware:
    """Refuses detect requests before their body is read when the service cannot take them, and
    bounds the time a body may take to arrive.

    Args:
        app: the ASGI app.
        service: the detection service (readiness, shutdown).
        admission: the shared counters and limits.
        body_timeout_s: longest time a whole body may take to arrive (the request's deadline, if
            shorter, bounds it too).
        refusal_log: where each 429 and 503 is logged (rate-limited); none when omitted.
    """

    def __init__(self, app: "ASGIApp", service: "DetectionService", admission: Admission,
                 body_timeout_s: float, refusal_log: RefusalLog | None = None) -> None:
        self.app = app
        self.service = service
        self.admission = admission
        self.body_timeout_s = body_timeout_s
        self.refusal_log = refusal_log or RefusalLog(per_s=0)

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = scope[_ARRIVED] = time.perf_counter()
        if scope.get("method") != "POST" or scope.get("path") not in GUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        admission, client = self.admission, client_group(scope)
        expected = scope.pop(_EXPECTED, None)
        if expected is not None:  # counted by the protocol layer until now: the check below counts it no more
            admission.unexpect(expected)
        try:
            deadline = check_before_body(self.service, admission, scope)
            token = admission.begin_upload(client)
        except Exception as exc:  # noqa: BLE001 - NotReady, ShuttingDown, Overloaded: answered before the body
            from workzone.server.errors import error_response, error_status

            scope[ENDPOINT_KEY] = scope["path"]
            status, kind = error_status(exc)
            self.refusal_log.refused(status, kind, client, scope, f"before the body: {exc}")
            await error_response(exc, admission.retry_after_s)(scope, receive, send)
            return
        delay = admission.penalty(client)
        if delay:  # counted as an upload meanwhile: a flood of held connections meets the upload limit
            try:
                await asyncio.sleep(delay)
            except BaseException:
                admission.end_upload(client, token)
                raise
            arrived = scope[_ARRIVED] = time.perf_counter()  # its deadline starts when its work may start
        held = [0, admission]
        scope[_HELD] = held
        body_s = self.body_timeout_s if deadline is None else min(self.body_timeout_s, deadline)
        body_end = arrived + body_s
        uploading, working = True, False

        def body_arrived() -> None:
            # The body is whole: only now is the request queued work, checked against what was
            # admitted while it arrived.
            nonlocal uploading, working
            uploading = False
            admission.end_upload(client, token)
            remaining = None if deadline is None else max(0.0, deadline - (time.perf_counter() - arrived))
            admission.check(self.service.expected_wait_s(admission.inflight), remaining, own_bytes=held[0])
            admission.inflight += 1
            working = True

        async def timed_receive() -> "Message":
            nonlocal uploading
            if not uploading:  # after the body, receive only waits for a disconnect: no timeout
                return await receive()
            try:
                # A floor of 10 ms: a body already received is taken even when the deadline is used up
                # (the request is then answered degraded, not refused). asyncio.timeout, not wait_for: on
                # Python 3.11 wait_for runs receive() in a task of its own, two more loop turns even for a
                # body already there, and a loop turn under 500 clients on 2 cores took milliseconds.
                async with asyncio.timeout(max(_BODY_FLOOR_S, body_end - time.perf_counter())):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"the request body did not arrive whole within {body_s:g} s (the body "
                                     "budget is the smaller of the server's body timeout and the request's "
                                     "deadline)") from None
            if message["type"] == "http.request":
                n = len(message.get("body", b""))
                held[0] += n
                admission.held_bytes += n
                if not message.get("more_body", False):
                    body_arrived()
            else:  # the client went away
                uploading = False
                admission.end_upload(client, token)
            return message

        async def watched_send(message: "Message") -> None:
            if message["type"] == "http.response.start":
                status = message.get("status")
                if status == 422 or status == 429 and scope.get(_STRIKE):
                    admission.strike(client)  # an unreadable or too costly image: see Admission.penalty
                if status in (429, 503):
                    kind, reason = scope.get(REFUSAL_KEY, ("-", "-"))
                    self.refusal_log.refused(status, kind, client, scope, reason)
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        finally:
            if uploading:
                admission.end_upload(client, token)
            if working:
                admission.inflight -= 1
            admission.held_bytes -= held[0]


def check_before_body(service: "DetectionService", admission: Admission, scope: "Scope") -> float | None:
    """What refuses a detect request from its headers alone, whoever asks (the middleware, or the protocol
    layer before an ASGI task exists): :class:`ShuttingDown`, ``NotReady`` or :class:`Overloaded` is
    raised. Returns the request's deadline (seconds; None: none)."""
    if not service.batcher.accepting and service.state not in ("created", "starting", "failed"):
        raise ShuttingDown(retry_after_s=admission.retry_after_s)
    service.check_ready()
    deadline = service.resolve_deadline(_header_deadline(scope))
    admission.check(service.expected_wait_s(admission.inflight + admission.upcoming()), deadline)
    return deadline


def server_timing(scope: "Scope", now: float, app_start: float | None = None) -> bytes:
    """The ``Server-Timing`` value of an answer whose status line is sent at ``now``: the server's own
    time from the request reaching the app (``app``; absent when no app ran), from reading its first
    bytes (``read``) and, on a connection's first request, from the accept (``accept``)."""
    parts = [] if app_start is None else [f"app;dur={(now - app_start) * 1000:.1f}"]
    for key, name in ((READ_KEY, "read"), (ACCEPTED_KEY, "accept")):
        if scope.get(key) is not None:
            parts.append(f"{name};dur={(now - scope[key]) * 1000:.1f}")
    return ", ".join(parts).encode()


class HeaderRefusal:
    """The refusals :func:`check_before_body` decides, made at the HTTP protocol layer: called by the
    protocol (:func:`header_timeout_protocol`) as soon as a request's headers are parsed, in the same
    event-loop callback that read them, it answers a request the server would refuse anyway without an
    ASGI task, the middleware stack or a single body byte read. Under 500 clients on 2 cores the ASGI
    path's refusals waited p99 19-40 ms inside the server after reading their first bytes (at load
    1.8-2.7), mostly for the loop turn that ran their task; these are answered within p99 0-5 ms
    (benchmarks/results/reliability.md, "The 429 tail").

    The answer is the one the ASGI path gives (:func:`~workzone.server.errors.error_response`: the
    documented error body, ``Retry-After``), with ``Server-Timing`` and ``Connection: close``; it is
    counted in the metrics and the refusal log as any other. A request carrying ``Origin`` (CORS
    headers are added by the ASGI stack) or a proxy's ``X-Forwarded-For``/``Forwarded`` (its client
    address is the ASGI stack's to resolve) is left to the middleware, which decides the same.

    Args:
        service: the detection service (readiness, shutdown, deadlines, expected wait).
        admission: the counters and limits the middleware uses.
        refusal_log: the middleware's log (one rate limit for both).
        observe: ``observe(endpoint, status, seconds)`` counts an answer in the metrics (none: not counted).
    """

    _ASGI_ONLY = frozenset({b"origin", b"x-forwarded-for", b"forwarded"})

    def __init__(self, service: "DetectionService", admission: Admission, refusal_log: RefusalLog | None = None,
                 observe: Any = None) -> None:
        self.service = service
        self.admission = admission
        self.refusal_log = refusal_log or RefusalLog(per_s=0)
        self.observe = observe

    def __call__(self, scope: "Scope") -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """The refusal of ``scope``'s request (status, headers, body), or None to let the app take it."""
        if scope.get("method") != "POST" or scope.get("path") not in GUARDED_PATHS:
            return None
        if any(name in self._ASGI_ONLY for name, _ in scope.get("headers") or ()):
            return None
        start = time.perf_counter()
        try:
            check_before_body(self.service, self.admission, scope)
        except Exception as exc:  # noqa: BLE001 - anything but a refusal is the app's to answer (the same check)
            if not isinstance(exc, (Overloaded, ShuttingDown, NotReady)):
                return None
            from workzone.server.errors import error_response, error_status

            status, kind = error_status(exc)
            self.refusal_log.refused(status, kind, client_group(scope), scope,
                                     f"before the body (at the protocol layer): {exc}")
            response = error_response(exc, self.admission.retry_after_s)
            headers = [*response.raw_headers, (b"server-timing", server_timing(scope, time.perf_counter())),
                       (b"connection", b"close")]
            if self.observe is not None:
                self.observe(scope["path"], status, time.perf_counter() - start)
            return status, headers, bytes(response.body)
        # Upcoming work until the middleware takes it: without it, a burst parsed in one loop turn all
        # passed here, and the middleware refused the last of them a loop turn later (under 500 clients
        # on 2 cores, 0.5-4 % of the refusals, p99 125-490 ms).
        scope[_EXPECTED] = self.admission.expect()
        return None


def _header_deadline(scope: "Scope") -> float | None:
    for key, value in scope.get("headers") or ():
        if key == b"x-deadline-s":
            try:
                v = float(value)
            except ValueError:
                return None  # the route refuses it with 400
            return v if 0 < v < float("inf") else None
    return None


class _LingeringTransport:
    """The transport uvicorn writes to, closed the way a refusal needs: when a response is complete
    but the request's body is still arriving (a 429 decided from the headers, a 413), closing at once
    would make the kernel answer the client's next body bytes with a reset, which can destroy the
    response before the client reads it (a dropped connection). Instead the write side is shut
    (the client reads the answer and an end of file) and what still arrives is read and discarded for
    up to ``_LINGER_S`` or ``_LINGER_BYTES``, as nginx's lingering close does."""

    def __init__(self, inner: Any, protocol: Any) -> None:
        self._inner = inner
        self._protocol = protocol
        self.lingering = False
        self.discarded = 0
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def is_closing(self) -> bool:
        return self.lingering or self._inner.is_closing()

    def close(self) -> None:
        cycle = getattr(self._protocol, "cycle", None)
        self.close_answered(cycle is not None and getattr(cycle, "more_body", False))

    def close_answered(self, body_unread: bool) -> None:
        """Close once the answer is written: at once when the request's body has been read whole,
        else lingering (the write side shut, the rest of the body read and discarded)."""
        if self.lingering or not body_unread or self._inner.is_closing() or not self._inner.can_write_eof():
            self._cancel()
            self._inner.close()
            return
        self.lingering = True
        self._inner.write_eof()
        self._inner.resume_reading()
        self._timer = asyncio.get_running_loop().call_later(_LINGER_S, self.close)

    def discard(self, data: bytes) -> None:
        self.discarded += len(data)
        if self.discarded > _LINGER_BYTES:
            self.close()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_LINGER_S = 2.0
_LINGER_BYTES = 4 << 20


def header_timeout_protocol(base: type, timeout_s: float, max_header_bytes: int = 32 * 1024,
                            refusal: HeaderRefusal | None = None) -> type:
    """A subclass of uvicorn's HTTP protocol ``base`` that closes connections whose request headers
    do not arrive within ``timeout_s`` (answering 408 when part of a request was sent), or pass
    ``max_header_bytes`` before they are complete (answering 431; httptools itself has no limit),
    and that closes a connection answered before its body arrived without resetting it
    (:class:`_LingeringTransport`). With ``refusal`` (and httptools' protocol, whose parser calls back
    when the headers are complete; h11's has no such hook), a request it refuses is answered in the
    callback that parsed its headers, its body never parsed, and the connection closed as above."""
    if not hasattr(base, "on_headers_complete"):
        refusal = None

    class HeaderTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        _wz_timer: asyncio.TimerHandle | None = None
        _wz_cycle: Any = None
        _wz_bytes = 0
        _wz_transport: _LingeringTransport | None = None
        _wz_accepted = 0.0
        _wz_read = 0.0
        _wz_refused = False  # answered from its headers at this layer: the rest of the connection is discarded
        _wz_complete = False  # ... and its whole body had arrived with them

        def connection_made(self, transport: Any) -> None:
            self._wz_accepted = time.perf_counter()
            self._wz_transport = _LingeringTransport(transport, self)
            super().connection_made(self._wz_transport)
            self._wz_arm()

        def data_received(self, data: bytes) -> None:
            if self._wz_transport is not None and self._wz_transport.lingering:
                self._wz_transport.discard(data)  # the rest of a refused body: never parsed
                return
            if not self._wz_bytes:
                self._wz_read = time.perf_counter()
            self._wz_bytes += len(data)
            super().data_received(data)
            if self._wz_refused:
                if not self.transport.is_closing():  # the parser has seen all of this data first
                    self._wz_transport.close_answered(body_unread=not self._wz_complete)  # type: ignore[union-attr]
                return
            if self._wz_timer is None:
                return
            if getattr(self, "cycle", None) is not self._wz_cycle:
                self._wz_timer.cancel()  # a new request's headers are complete
                self._wz_timer = None
                scope = getattr(self.cycle, "scope", None)
                if isinstance(scope, dict):  # its app has not started yet (one thread): for the metrics
                    scope[READ_KEY] = self._wz_read
                    if not self._wz_cycle:  # the connection's first request
                        scope[ACCEPTED_KEY] = self._wz_accepted
            elif (self._wz_bytes > max_header_bytes and not self.transport.is_closing()
                  # the rest of a body answered before it was read (413) is not a header
                  and not getattr(getattr(self, "cycle", None), "more_body", False)):
                self._wz_timer.cancel()
                self._wz_timer = None
                self.transport.write(_TOO_LARGE_RESPONSE)
                self.transport.close()

        def on_headers_complete(self) -> None:
            if self._wz_refused or refusal is not None and self._wz_refuse(refusal):
                return  # refused (or a request pipelined after a refusal): no ASGI task
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._wz_refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._wz_refused:
                self._wz_complete = True
                return
            super().on_message_complete()

        def _wz_refuse(self, refusal: HeaderRefusal) -> bool:
            if self.parser.get_method() != b"POST":
                return False  # only detect requests are refused here; parse nothing more for the others
            import httptools

            try:
                path = httptools.parse_url(self.url).path.decode("ascii")
            except (httptools.HttpParserError, UnicodeDecodeError):
                return False  # the app's own path answers it, as before
            scope = self.scope
            scope["method"] = "POST"
            scope["path"] = self.root_path + (urllib.parse.unquote(path) if "%" in path else path)
            scope[READ_KEY] = self._wz_read
            if not self._wz_cycle:  # the connection's first request
                scope[ACCEPTED_KEY] = self._wz_accepted
            answer = refusal(scope)
            if answer is None:
                return False  # uvicorn builds the same scope again and starts the app
            status, headers, body = answer
            self._wz_refused = True
            if self._wz_timer is not None:
                self._wz_timer.cancel()
                self._wz_timer = None
            out = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
            for name, value in (*self.server_state.default_headers, *headers):
                out += [name, b": ", value, b"\r\n"]
            self.transport.write(b"".join(out) + b"\r\n" + body)
            return True

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._wz_arm()  # the next request on this keep-alive connection gets the same budget

        def connection_lost(self, exc: Exception | None) -> None:
            if self._wz_timer is not None:
                self._wz_timer.cancel()
            if self._wz_transport is not None:
                self._wz_transport._cancel()
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

_TOO_LARGE_BODY = (b'{"error":{"type":"headers_too_large","message":"the request line and headers are over the '
                   b'server\'s size limit","status":431}}')
_TOO_LARGE_RESPONSE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                       b"connection: close\r\n" + f"content-length: {len(_TOO_LARGE_BODY)}\r\n\r\n".encode()
                       + _TOO_LARGE_BODY)
