"""The retrain schedule's loop: publishes the scheduled requests to retrain.requests.

The decision (which model is due, the request's id) is `core.schedule.due`; this loop
only ticks and publishes. A failed publish is retried on the next tick (the slot is
recorded only once the broker acknowledged the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from libs.common.clients.kafka import Publisher
from libs.common.definitions import ModelDefinition
from libs.common.observability import get_logger
from services.retrain.core.schedule import due, slot_of

log = get_logger(__name__)


class RetrainScheduler:
    """Publishes a RetrainModel per scheduled model and slot (`retrain_every_s`)."""

    def __init__(
        self,
        models: Sequence[ModelDefinition],
        publisher: Publisher,
        topic: str,
        *,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.models = [m for m in models if m.retrain_every_s is not None]
        self._publisher = publisher
        self._topic = topic
        self._tick_s = tick_s
        self._clock = clock
        now = clock()
        self.last_slot = {
            m.name: slot_of(m.retrain_every_s, now)
            for m in self.models
            if m.retrain_every_s is not None
        }

    async def tick(self) -> int:
        """Publish what is due now; returns how many requests were published."""
        published = 0
        for request, slot in due(self.models, self._clock(), self.last_slot):
            try:
                await self._publisher.publish(self._topic, request, key=request.model)
            except Exception:
                log.warning("scheduled_retrain_not_published", model=request.model, exc_info=True)
                continue
            self.last_slot[request.model] = slot
            published += 1
            log.info("scheduled_retrain", model=request.model, request_id=request.event_id)
        return published

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set."""
        while not stop.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._tick_s)
