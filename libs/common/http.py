"""ASGI pieces both HTTP services share."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from libs.common.observability.metrics import HTTP_IN_FLIGHT, HTTP_REFUSED
from libs.common.security import SecurityError

Scope = dict[str, Any]


class JsonBodiesByDefault:
    """Treat POST bodies sent without a JSON content type as JSON.

    `curl -d '{...}'` labels its body application/x-www-form-urlencoded; the API only
    speaks JSON (DESIGN.md's own examples use plain `curl -d`), so the label is
    replaced instead of failing a well-formed request.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            headers = [
                (k, v)
                for k, v in scope["headers"]
                if not (k == b"content-type" and not v.startswith(b"application/json"))
            ]
            if not any(k == b"content-type" for k, _ in headers):
                headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    """Raised from `receive` when a streamed body passes the limit mid-request."""


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, before anything parses them.

    A declared Content-Length over the limit is refused without reading a byte. A
    body without one (chunked) is read up to the limit and handed on whole, or
    refused as soon as it passes it. A pure ASGI middleware: Starlette's
    BaseHTTPMiddleware costs a task and a stream copy per request (issue 8 profile).

    Args:
        app: the ASGI app to protect.
        max_bytes: the largest body accepted.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if declared > self.max_bytes:
                await self._refuse(send, f"the body is {declared} bytes")
                return
            await self.app(scope, receive, send)  # the server enforces the declared length
            return
        try:
            messages = await self._read_capped(receive)
        except _BodyTooLarge:
            await self._refuse(send, "the streamed body passed the limit")
            return

        async def replay() -> dict[str, Any]:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _read_capped(self, receive: Any) -> list[dict[str, Any]]:
        """Every body message up to the last, unless their bytes pass the limit."""
        messages: list[dict[str, Any]] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # a disconnect: let the app see it
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                raise _BodyTooLarge
            if not message.get("more_body", False):
                return messages

    async def _refuse(self, send: Any, what: str) -> None:
        message = f"{what}; the limit is {self.max_bytes} bytes: split the request"
        await _send_json(send, 413, "body_too_large", message, (b"connection", b"close"))


class ConcurrencyLimit:
    """Answer 503 with Retry-After at once when `max_requests` requests are in flight.

    Only requests whose method is in `methods` take a slot (the POSTs that carry
    bodies); probes and /metrics always answer. A refused request is answered before
    a byte of its body is read, so a flood of large bodies holds at most
    `max_requests` bodies in memory: uvicorn stops reading a socket whose body the app
    has not asked for, and discards the rest once the answer is sent, keeping the
    connection (the client reads its 503 instead of a reset). Counting, not queueing:
    a queue would hold the very bodies the limit is there to keep out.

    Args:
        app: the ASGI app to protect.
        service: label of the in-flight gauge and the refusals counter.
        max_requests: most requests served at once.
        retry_after_s: the Retry-After of a refusal.
        methods: the methods that take a slot.
    """

    def __init__(
        self,
        app: Any,
        *,
        service: str,
        max_requests: int,
        retry_after_s: int = 1,
        methods: frozenset[str] = frozenset({"POST"}),
    ) -> None:
        self.app = app
        self.max_requests = max_requests
        self.methods = methods
        self.in_flight = 0
        self._gauge = HTTP_IN_FLIGHT.labels(service)
        self._refused = HTTP_REFUSED.labels(service, "concurrency_limit")
        self._retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in self.methods:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_requests:
            self._refused.inc()
            await self._refuse(send)
            return
        # One event loop: the check above and this increment cannot interleave.
        self.in_flight += 1
        self._gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self._gauge.dec()

    async def _refuse(self, send: Any) -> None:
        message = (
            f"{self.max_requests} requests are being served; retry after "
            f"{self._retry_after.decode()} s"
        )
        await _send_json(
            send, 503, "too_many_requests_in_flight", message, (b"retry-after", self._retry_after)
        )


async def _send_json(
    send: Any, status: int, error: str, message: str, *headers: tuple[bytes, bytes]
) -> None:
    """A whole JSON answer {"error", "message"} from a pure ASGI middleware."""
    body = json.dumps({"error": error, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for k, v in scope["headers"]:
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


def security_refusal(exc: SecurityError) -> JSONResponse:
    """The 401 or 403 answer of a refused key, in the services' error shape.

    401 carries `WWW-Authenticate: Bearer` (RFC 6750); the message never echoes the key.
    """
    response = JSONResponse({"error": exc.code, "message": str(exc)}, status_code=exc.status)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response
