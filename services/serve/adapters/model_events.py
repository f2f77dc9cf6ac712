"""Model events: each replica follows models.events on its own, from the end, uncommitted.

Every replica must see every event (each holds its own models), so the subscription
has no consumer group: the shared runtime assigns all partitions and starts at their
end, and supervises the loop (reconnects, restarts). Events missed while a replica
was down are covered by the registry poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tenacity import AsyncRetrying, wait_random_exponential

from libs.common.clients.kafka import Delivery, KafkaRuntime, Subscription
from libs.common.observability.logging import get_logger
from libs.common.observability.tracing import extract_context, tracer
from libs.common.schemas import ModelChanged
from libs.common.settings import Settings
from services.serve.adapters.base import OnModelChanged

log = get_logger(__name__)


class KafkaModelEvents:
    """ModelChanged facts from the models topic, through the shared Kafka runtime."""

    def __init__(self, settings: Settings, *, client_id: str) -> None:
        self._runtime = KafkaRuntime(settings, client_id=client_id)
        self._topic = settings.topics.models
        self._on_event: OnModelChanged | None = None
        self._connect: asyncio.Task[None] | None = None

    async def start(self, on_event: OnModelChanged) -> None:
        """Begin following in the background; returns at once (serve never waits on Kafka
        to answer). `wait_following` tells when later events are sure to arrive.
        """
        self._on_event = on_event
        self._runtime.subscribe(
            Subscription(
                name=f"serve {self._topic}",
                topics={self._topic: ModelChanged},
                handler=self._deliver,
                group=None,
            )
        )
        self._connect = asyncio.create_task(self._start_runtime(), name="model-events connect")

    async def _start_runtime(self) -> None:
        async for attempt in AsyncRetrying(wait=wait_random_exponential(0.5, 30)):
            with attempt:
                await self._runtime.start([self._topic])

    async def _deliver(self, batch: list[Delivery[Any]]) -> None:
        assert self._on_event is not None
        for d in batch:
            with tracer().start_as_current_span(
                "serve.model_event", context=extract_context(list(d.headers))
            ):
                await self._on_event(d.message)

    async def wait_following(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.status() != "following":  # noqa: ASYNC110 (state of another task)
                    await asyncio.sleep(0.05)
                return True
        return False

    def status(self) -> str:
        """following | connecting | the liveness problem of the loop."""
        dead = self._runtime.liveness()
        if dead:
            return "; ".join(dead)[:200]
        return "following" if self._runtime.all_started() else "connecting"

    def liveness(self) -> list[str]:
        return self._runtime.liveness()

    async def stop(self) -> None:
        if self._connect is not None:
            self._connect.cancel()
            with contextlib.suppress(BaseException):
                await self._connect
        await self._runtime.stop()
