"""Shared fuzzing pieces: hypothesis strategies over the seed corpus, HTTP request variants, and a
minimal raw HTTP/1.1 client that tells a dropped connection from an answer.

Used by the CI tests in this folder (few examples) and by ``benchmarks/reliability.py`` (many).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.reliability.corpus import load_seeds

__all__ = ["mutated_images", "odd_arrays", "http_requests", "HttpRequest", "RawResult", "raw_request",
           "raw_request_in_callbacks"]

_SEEDS = load_seeds()
_NAMES = sorted(_SEEDS)
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 30000, 0x7FFFFFFF, 0xFFFFFFFF)


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A seed image after 1-4 mutations: bit flips, truncation, splices, header edits, duplications."""
    data = bytearray(_SEEDS[draw(st.sampled_from(_NAMES))])
    for op in draw(st.lists(st.sampled_from(["flip", "truncate", "splice", "header", "repeat", "zero"]),
                            min_size=1, max_size=4)):
        n = len(data)
        if n < 2:
            break
        if op == "flip":
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, n - 1))
                data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            data = data[:draw(st.integers(1, n - 1))]
        elif op == "splice":
            other = _SEEDS[draw(st.sampled_from(_NAMES))]
            a, b = sorted((draw(st.integers(0, len(other))), draw(st.integers(0, len(other)))))
            at = draw(st.integers(0, n))
            data[at:at] = other[a:b]
        elif op == "header":  # sizes, lengths and counts live in the first bytes of every format
            value = draw(st.sampled_from(_INTERESTING) | st.integers(0, 0xFFFFFFFF))
            width = draw(st.sampled_from([1, 2, 4]))
            at = draw(st.integers(0, max(0, min(n, 96) - width)))
            order = draw(st.sampled_from(["big", "little"]))
            data[at:at + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, order)
        elif op == "repeat":
            a = draw(st.integers(0, n - 1))
            b = draw(st.integers(a, min(n, a + 512)))
            data[b:b] = data[a:b] * draw(st.integers(1, 20))
        else:
            a = draw(st.integers(0, n - 1))
            data[a:a + draw(st.integers(1, 64))] = b"\x00" * 64
    return bytes(data)


@st.composite
def odd_arrays(draw: st.DrawFn) -> Any:
    """Numpy arrays of any dtype and a plausible or odd shape (what a Python caller might pass)."""
    import numpy as np
    from hypothesis.extra import numpy as hnp

    dtype = draw(st.sampled_from(["uint8", "uint16", "int32", "int64", "float32", "float64", "bool", "complex64",
                                  "object", "U3", "datetime64[s]", "float16"]))
    shape = draw(st.sampled_from([(20, 24), (20, 24, 3), (20, 24, 4), (20, 24, 1), (20, 24, 2), (3,), (0, 24, 3),
                                  (20, 0), (1, 1, 3), (2, 20, 24, 3), (16, 16, 3)]))
    if dtype in ("object", "U3", "datetime64[s]"):
        return np.zeros(shape, dtype=dtype)
    return draw(hnp.arrays(np.dtype(dtype), shape, elements=None if dtype != "bool" else st.booleans()))


@dataclass(frozen=True)
class HttpRequest:
    """One request to send: path, content type (None: no header), body, extra headers."""

    path: str
    content_type: str | None
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _multipart(field: str, payload: bytes, filename: str, extra: str = "") -> tuple[str, bytes]:
    boundary = "wzfuzzboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n{extra}--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                     max_leaves=12)


@st.composite
def http_requests(draw: st.DrawFn) -> HttpRequest:
    """A detect request with a mutated image, a malformed envelope, or odd headers."""
    image = draw(mutated_images())
    b64 = base64.b64encode(image).decode()
    kind = draw(st.sampled_from(["raw", "octet", "multipart", "json", "json_batch", "multipart_batch", "json_junk",
                                 "wrong_type", "empty", "stream"]))
    headers: tuple[tuple[str, str], ...] = ()
    if draw(st.booleans()):
        headers = (("X-Deadline-S", draw(st.sampled_from(["2", "0.001", "-1", "nan", "inf", "1e308", "abc", "5"]))),)
    if kind == "raw":
        return HttpRequest("/v1/detect", "image/jpeg", image, headers)
    if kind == "octet":
        return HttpRequest("/v1/detect", "application/octet-stream", image, headers)
    if kind == "stream":
        return HttpRequest("/v1/detect/stream", "image/png", image, headers)
    if kind == "multipart":
        ctype, body = _multipart("image", image, draw(st.sampled_from(["a.jpg", "../../etc/passwd", "x" * 300, ""])))
        return HttpRequest("/v1/detect", ctype, body, headers)
    if kind == "multipart_batch":
        ctype, body = _multipart("images", image, "b.png")
        return HttpRequest("/v1/detect/batch", ctype, body, headers)
    if kind == "json":
        field = draw(st.sampled_from(["image", "image", "url"]))
        value: Any = b64 if field == "image" else draw(st.sampled_from(["http://127.0.0.1/x", "file:///etc/passwd",
                                                                        "http://[2002:a9fe:a9fe::]/", "nope"]))
        doc: dict[str, Any] = {field: value}
        if draw(st.booleans()):
            doc["deadline_s"] = draw(st.sampled_from([1, 0, -3, "x", None, 1e309]))
        return HttpRequest("/v1/detect", "application/json", json.dumps(doc).encode(), headers)
    if kind == "json_batch":
        n = draw(st.integers(0, 3))
        doc = {"images": [{"image": b64} for _ in range(n)] + [{"image": "%%%"}] * draw(st.integers(0, 1))}
        return HttpRequest("/v1/detect/batch", "application/json", json.dumps(doc).encode(), headers)
    if kind == "json_junk":
        return HttpRequest(draw(st.sampled_from(["/v1/detect", "/v1/detect/batch"])), "application/json",
                           json.dumps(draw(_JSON)).encode(), headers)
    if kind == "wrong_type":
        return HttpRequest("/v1/detect", draw(st.sampled_from([None, "text/plain", "multipart/form-data",
                                                               "application/x-www-form-urlencoded"])), image, headers)
    return HttpRequest("/v1/detect", "image/jpeg", b"", headers)


@dataclass(frozen=True)
class RawResult:
    """What came back: the status (None when the connection closed without one), the latency, the body."""

    status: int | None
    latency_s: float
    body: bytes = b""
    error: str | None = None
    connect_s: float | None = None  # of latency_s, the time to connect (the client's side of the clock)
    server_s: float | None = None  # the server's own time to the status line (its Server-Timing header)
    accept_s: float | None = None  # the same from the server's accept of the connection
    read_s: float | None = None  # the same from the server's reading the request's first bytes


def _server_timing(head: bytes, entry: bytes = b"app") -> float | None:
    """Seconds of the ``entry`` of a ``Server-Timing: app;dur=<ms>, accept;dur=<ms>`` header, if the
    answer has one."""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"server-timing":
            continue
        for part in value.split(b","):
            key, _, params = part.strip().partition(b";")
            if key == entry and params.startswith(b"dur="):
                try:
                    return float(params[4:].split(b";")[0]) / 1000
                except ValueError:
                    return None
    return None


def _request_bytes(host: str, port: int, req: HttpRequest) -> bytes:
    head = f"POST {req.path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    if req.content_type is not None:
        head += f"Content-Type: {req.content_type}\r\n"
    for k, v in req.headers:
        head += f"{k}: {v}\r\n"
    head += f"Content-Length: {len(req.body)}\r\n\r\n"
    return head.encode() + req.body


def _answer(line: bytes, latency: float, rest: bytes, connected: float) -> RawResult:
    """The result of an answer whose status ``line`` came ``latency`` s after the request began, followed by ``rest``."""
    status = int(line.split()[1])
    head_part, sep, body = rest.partition(b"\r\n\r\n")
    return RawResult(status, latency, body if sep else rest, connect_s=connected, server_s=_server_timing(head_part),
                     accept_s=_server_timing(head_part, b"accept"), read_s=_server_timing(head_part, b"read"))


async def raw_request(host: str, port: int, req: HttpRequest, timeout_s: float = 30.0,
                      local_addr: str | None = None) -> RawResult:
    """Send ``req`` over a fresh connection (``Connection: close``) and read the whole answer.

    A connection that closes or resets before a status line is a *dropped* request (status None).
    ``local_addr`` picks the client address (another loopback address plays another client).
    """
    t = time.perf_counter()
    writer = None
    try:
        local = None if local_addr is None else (local_addr, 0)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=local), timeout_s)
        connected = time.perf_counter() - t
        writer.write(_request_bytes(host, port, req))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        if not line:
            return RawResult(None, time.perf_counter() - t, error="closed without a status line")
        latency = time.perf_counter() - t
        return _answer(line, latency, await asyncio.wait_for(reader.read(), timeout_s), connected)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        return RawResult(None, time.perf_counter() - t, error=f"{type(exc).__name__}: {exc}")
    except asyncio.TimeoutError:
        return RawResult(None, time.perf_counter() - t, error="timeout")
    finally:
        if writer is not None:
            writer.close()


class _OneAnswer(asyncio.Protocol):
    """Writes one request when connected and keeps what comes back, stamping (``time.perf_counter()``)
    the connection and the arrival of the status line's end in the callbacks that see them."""

    def __init__(self, payload: bytes, done: "asyncio.Future[BaseException | None]") -> None:
        self.payload, self.done = payload, done
        self.connected_at = self.status_at = 0.0
        self.data = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connected_at = time.perf_counter()
        transport.write(self.payload)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.status_at and b"\n" in data:
            self.status_at = time.perf_counter()
        self.data += data

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_result(exc)


async def raw_request_in_callbacks(host: str, port: int, req: HttpRequest, timeout_s: float = 30.0,
                                   local_addr: str | None = None) -> RawResult:
    """:func:`raw_request` with the same clock and the same outcomes, stamped in the event loop's
    callbacks (an ``asyncio.Protocol``) instead of the awaiting coroutine: no stream objects, and not
    the extra loop turns before a coroutine resumes. A load generator with 500 such clients on the
    server's own cores adds less of its own time to what it measures. Its clock still starts before
    the connect and stops when the status line has been received; a reset, or a close before the
    answer's end, is a dropped request as in :func:`raw_request`."""
    loop = asyncio.get_running_loop()
    t = time.perf_counter()
    done: asyncio.Future[BaseException | None] = loop.create_future()
    one = _OneAnswer(_request_bytes(host, port, req), done)
    transport = None
    try:
        async with asyncio.timeout(timeout_s):
            transport, _ = await loop.create_connection(lambda: one, host, port,
                                                        local_addr=None if local_addr is None else (local_addr, 0))
            exc = await done
    except OSError as exc:
        return RawResult(None, time.perf_counter() - t, error=f"{type(exc).__name__}: {exc}")
    except TimeoutError:
        return RawResult(None, time.perf_counter() - t, error="timeout")
    finally:
        if transport is not None:
            transport.close()
    if exc is not None or not one.status_at:
        error = "closed without a status line" if exc is None else f"{type(exc).__name__}: {exc}"
        return RawResult(None, time.perf_counter() - t, error=error)
    line, _, rest = bytes(one.data).partition(b"\r\n")
    try:
        return _answer(line, one.status_at - t, rest, one.connected_at - t)
    except (ValueError, IndexError) as exc:
        return RawResult(None, time.perf_counter() - t, error=f"{type(exc).__name__}: {exc}")
