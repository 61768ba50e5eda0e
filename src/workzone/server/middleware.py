"""ASGI middleware of the HTTP server: the request-body limit, enforced before a body is read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workzone.errors import PayloadTooLarge

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware"]


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` before they are read.

    A declared Content-Length over the limit is answered 413 at once; a body without one (chunked)
    is counted as it streams and the read fails with :class:`PayloadTooLarge` when it passes the
    limit, so the server never holds more than ``max_bytes`` of it.
    """

    def __init__(self, app: "ASGIApp", max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            from workzone.server.errors import error_response

            exc = PayloadTooLarge(f"the request body is {int(declared)} bytes; the limit is {self.max_bytes}")
            await error_response(exc)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"the request body is over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)
