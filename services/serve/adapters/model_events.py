"""Model events: each replica reads models.events on its own, from the end, uncommitted.

Every replica must see every event (they each hold their own model), so there is no
consumer group: the replica assigns itself all partitions and starts at the end.
Events missed while a replica was down are covered by the registry poll.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from libs.common.clients.kafka import ensure_topics
from libs.common.observability.logging import get_logger
from libs.common.observability.tracing import extract_context, tracer
from libs.common.schemas import ModelChanged
from services.serve.adapters.base import OnModelChanged

log = get_logger(__name__)


class KafkaModelEvents:
    """ModelChanged facts from `topic`, delivered from the moment `start` returns."""

    def __init__(
        self, bootstrap: str, topic: str, *, client_id: str, partitions: int, poll_ms: int = 500
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._client_id = client_id
        self._partitions = partitions
        self._poll_ms = poll_ms
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Create the topic if needed, assign all its partitions, position at their end.

        When this returns, positions are resolved: any event published later is read.
        """
        await ensure_topics(self._bootstrap, [self._topic], self._partitions)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        await consumer.start()
        try:
            await consumer.topics()  # refresh metadata so the new topic's partitions show
            parts = consumer.partitions_for_topic(self._topic) or set()
            if not parts:
                raise RuntimeError(f"topic {self._topic!r} has no partitions yet")
            tps = [TopicPartition(self._topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        log.info("model_events_following", topic=self._topic, partitions=len(tps))

    async def run(self, on_event: OnModelChanged, stop: asyncio.Event) -> None:
        if self._consumer is None:
            raise RuntimeError("start() first")
        while not stop.is_set():
            batches = await self._consumer.getmany(timeout_ms=self._poll_ms)
            for records in batches.values():
                for rec in records:
                    try:
                        event = ModelChanged.model_validate_json(rec.value or b"")
                    except ValidationError as exc:
                        # Not ours to dead-letter (retrain owns the topic); say so loudly.
                        log.error(
                            "model_event_invalid",
                            topic=rec.topic,
                            offset=rec.offset,
                            error=str(exc)[:500],
                        )
                        continue
                    ctx = extract_context(rec.headers)
                    with tracer().start_as_current_span("serve.model_event", context=ctx):
                        await on_event(event)

    async def stop(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
