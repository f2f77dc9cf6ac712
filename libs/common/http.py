"""ASGI pieces both HTTP services share."""

from __future__ import annotations

from typing import Any

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
