"""signals.valid -> online store (history + vectors) and offline store, or dead letters."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from opentelemetry import trace

from libs.common.clients.kafka import DeadLetters, Delivery
from libs.common.clients.redis import FeatureStore, StoredEvent, StoredVector
from libs.common.definitions import Definitions
from libs.common.features import EventHistory
from libs.common.observability import LATENCY, get_logger, tracer
from libs.common.observability.tracing import producer_links
from libs.common.offline import SIGNALS, OfflineStore
from libs.common.resilience import Policy
from libs.common.schemas import Signal
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
    """Signals of one batch -> histories, vectors, offline rows; misplaced ones dead-lettered.

    Args:
        definitions: sources and views.
        store: the online store.
        dead_letters: the runtime's dead-letter middleware (stage "features").
        topics: topic names (for the span name).
        offline: the offline store, or None to write online only.
    """

    definitions: Definitions
    store: FeatureStore
    dead_letters: DeadLetters
    topics: Topics
    offline: OfflineStore | None = None
    # Timeouts, retries and breakers of the two stores (the consume loop waits out an
    # outage that outlasts them: DependencyUnavailable is transient).
    redis: Policy = field(default_factory=lambda: Policy("redis", timeout_s=5.0))
    files: Policy = field(default_factory=lambda: Policy("offline-store", timeout_s=30.0))

    async def on_valid_signals(self, batch: list[Delivery[Signal]]) -> list[VectorComputed]:
        """Handle one consumed batch; returns the vectors written.

        Order matters for at-least-once: the offline file, the online writes and the
        dead letters all finish before this returns, and only then are offsets
        committed. A retried batch rewrites the same state and the same dead letters
        (their ids derive from the records).
        """
        links = producer_links(d.headers for d in batch)
        with tracer("features").start_as_current_span(
            f"{self.topics.valid} process", kind=trace.SpanKind.CONSUMER, links=links
        ):
            return await self._handle(batch)

    async def _handle(self, batch: list[Delivery[Signal]]) -> list[VectorComputed]:
        started = time.perf_counter()
        delivery_of = {id(d.message): d for d in batch}
        groups, rejected = group_signals((d.message for d in batch), self.definitions)
        views_of = by_source(self.definitions)
        computed: list[VectorComputed] = []
        for group in groups:
            views = views_of.get(group.source.name, [])
            stored = await self.redis.call(
                self.store.add_events,
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
        await self.redis.call(
            self.store.write_vectors,
            [
                (c.view.name, c.view.version, c.entity_id, StoredVector(c.values, c.as_of, now))
                for c in computed
            ],
        )
        if self.offline is not None and batch:
            await self.files.call_blocking(self._append_offline, batch)
        await self.dead_letters.reject_many(
            [
                self.dead_letters.of(
                    delivery_of[id(signal)], why.reason, why.detail, source=signal.source
                )
                for signal, why in rejected
            ]
        )
        LATENCY.labels("features", "on_valid_signals").observe(time.perf_counter() - started)
        log.debug("batch_done", records=len(batch), vectors=len(computed))
        return computed

    def _append_offline(self, batch: list[Delivery[Signal]]) -> None:
        # One file per partition, named by its first and last offset: a redelivery of
        # the same records (also to another instance after a rebalance) rewrites the
        # same file, never one holding another partition's rows.
        assert self.offline is not None
        by_partition: dict[tuple[str, int], list[Delivery[Signal]]] = {}
        for d in batch:
            by_partition.setdefault((d.topic, d.partition), []).append(d)
        for (topic, partition), part in by_partition.items():
            first, last = min(d.offset for d in part), max(d.offset for d in part)
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
                    for s in (d.message for d in part)
                ],
                name=f"{topic}-{partition}-{first}-{last}",
            )
