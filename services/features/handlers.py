"""signals.valid -> online store (history + vectors) and offline store, or dead letters."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from aiokafka import ConsumerRecord
from opentelemetry import trace

from libs.common.clients.kafka import Publisher, decode_or_dead_letter
from libs.common.clients.redis import FeatureStore, StoredEvent, StoredVector
from libs.common.definitions import Definitions
from libs.common.features import EventHistory
from libs.common.observability import DEAD_LETTERS, LATENCY, get_logger, tracer
from libs.common.observability.tracing import producer_links
from libs.common.offline import SIGNALS, OfflineStore
from libs.common.schemas import RecordRejected, Signal
from libs.common.settings import Topics
from services.features.core.updates import (
    VectorComputed,
    by_source,
    compute_vectors,
    group_signals,
)

log = get_logger(__name__)


@dataclass
class FeaturesHandler:
    definitions: Definitions
    store: FeatureStore
    publisher: Publisher
    topics: Topics
    offline: OfflineStore | None = None

    async def on_valid_signals(self, records: list[ConsumerRecord]) -> list[VectorComputed]:
        """Handle one consumed batch; returns the vectors written.

        Order matters for at-least-once: the offline file and the online writes both
        finish before this returns, and only then does the caller commit offsets.
        """
        links = producer_links(r.headers for r in records)
        with tracer("features").start_as_current_span(
            f"{self.topics.valid} process", kind=trace.SpanKind.CONSUMER, links=links
        ):
            return await self._handle(records)

    async def _handle(self, records: list[ConsumerRecord]) -> list[VectorComputed]:
        started = time.perf_counter()
        decoded = await decode_or_dead_letter(
            records, Signal, self.publisher, dlq_topic=self.topics.dlq, stage="features"
        )
        groups, rejected = group_signals((s for _, s in decoded), self.definitions)
        for signal, why in rejected:
            await self.publisher.publish(
                self.topics.dlq,
                RecordRejected.of(
                    signal.to_bytes(),
                    stage="features",
                    source=signal.source,
                    reason=why.reason,
                    detail=why.detail,
                    topic=self.topics.valid,
                    key=signal.entity_id,
                ),
                key=signal.source,
            )
            DEAD_LETTERS.labels("features", why.reason).inc()
        views_of = by_source(self.definitions)
        computed: list[VectorComputed] = []
        for group in groups:
            views = views_of.get(group.source.name, [])
            stored = await self.store.add_events(
                group.source.name,
                group.source.version,
                group.entity_id,
                [
                    StoredEvent(s.event_id, s.event_time.timestamp(), s.fields)
                    for s in group.signals
                ],
                retention_s=self.definitions.retention_of(group.source.name),
            )
            history = EventHistory.from_events([(e.event_id, e.ts, e.fields) for e in stored])
            computed.extend(compute_vectors(views, group.entity_id, history))
        now = time.time()
        await self.store.write_vectors(
            [
                (c.view.name, c.view.version, c.entity_id, StoredVector(c.values, c.as_of, now))
                for c in computed
            ]
        )
        if self.offline is not None and decoded:
            await asyncio.to_thread(self._append_offline, records, [s for _, s in decoded])
        LATENCY.labels("features", "on_valid_signals").observe(time.perf_counter() - started)
        log.debug("batch_done", records=len(records), vectors=len(computed))
        return computed

    def _append_offline(self, records: list[ConsumerRecord], signals: list[Signal]) -> None:
        first = min(records, key=lambda r: (r.partition, r.offset))
        name = f"{first.topic}-{first.partition}-{first.offset}-{len(records)}"
        assert self.offline is not None
        self.offline.append(
            SIGNALS,
            [
                {
                    "event_id": s.event_id,
                    "source": s.source,
                    "schema_version": s.schema_version,
                    "entity_id": s.entity_id,
                    "ts": s.event_time.timestamp(),
                    "fields_json": json.dumps(s.fields, sort_keys=True),
                }
                for s in signals
            ],
            name=name,
        )
