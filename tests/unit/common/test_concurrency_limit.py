"""ConcurrencyLimit: excess POSTs answered 503 at once, before their body is read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from libs.common.http import ConcurrencyLimit

Message = dict[str, Any]


class GatedApp:
    """Reads the body, then answers 200 once `gate` opens (GETs answer at once)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["method"] == "POST":
            while (await receive()).get("more_body", False):
                pass
            await self.gate.wait()
            if scope["path"] == "/boom":
                raise RuntimeError("handler failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(
    app: Callable[[Message, Any, Any], Awaitable[None]], method: str, path: str = "/v1/signals"
) -> tuple[int, dict[bytes, bytes], int]:
    """(status, headers, body messages the app asked for) of one request."""
    scope = {"type": "http", "method": method, "path": path, "headers": []}
    sent: list[Message] = []
    reads = 0

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return start["status"], dict(start["headers"]), reads


async def until(check: Callable[[], bool]) -> None:
    """Yield to the loop until `check` holds (bounded)."""
    async with asyncio.timeout(5):
        while True:
            if check():
                return
            await asyncio.sleep(0)


def refused(service: str) -> float:
    value = REGISTRY.get_sample_value(
        "signalops_http_refused_total", {"service": service, "reason": "concurrency_limit"}
    )
    return value or 0.0


async def test_excess_posts_are_refused_before_reading_and_slots_come_back() -> None:
    """With two POSTs in flight, a third is answered 503 with Retry-After without its
    body being read; GETs still answer; once the two finish, POSTs are served again."""
    inner = GatedApp()
    limit = ConcurrencyLimit(inner, service="test-limit", max_requests=2, retry_after_s=3)

    # Two POSTs take both slots and wait inside the app.
    held = [asyncio.create_task(call(limit, "POST")) for _ in range(2)]
    await until(lambda: limit.in_flight == 2)

    # The third is refused at once, unread; probes are not limited.
    status, headers, reads = await call(limit, "POST")
    assert (status, headers[b"retry-after"], reads) == (503, b"3", 0)
    assert refused("test-limit") == 1
    assert (await call(limit, "GET", "/healthz"))[0] == 200

    # The held requests finish; their slots are free again.
    inner.gate.set()
    assert [s for s, _, _ in await asyncio.gather(*held)] == [200, 200]
    assert limit.in_flight == 0
    assert (await call(limit, "POST"))[0] == 200
    assert (
        REGISTRY.get_sample_value("signalops_http_in_flight_requests", {"service": "test-limit"})
        == 0
    )


async def test_a_failing_request_gives_its_slot_back() -> None:
    """An app exception propagates and still frees the slot."""
    inner = GatedApp()
    inner.gate.set()
    limit = ConcurrencyLimit(inner, service="test-limit-fail", max_requests=1)
    with pytest.raises(RuntimeError, match="handler failed"):
        await call(limit, "POST", "/boom")
    assert limit.in_flight == 0
    assert (await call(limit, "POST"))[0] == 200
