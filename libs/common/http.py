"""ASGI pieces both HTTP services share."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

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
        body = json.dumps(
            {
                "error": "body_too_large",
                "message": f"{what}; the limit is {self.max_bytes} bytes: split the request",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
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
