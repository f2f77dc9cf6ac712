"""signals.valid -> per-view states and vectors (online), signal rows (offline), dead letters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from opentelemetry import trace

from libs.common.clients.kafka import DeadLetters, Delivery
from libs.common.clients.redis import FeatureStore, StoredVector, state_key
from libs.common.definitions import Definitions
from libs.common.errors import RecordInvalid
from libs.common.features import codec
from libs.common.features.engine import States
from libs.common.observability import LATENCY, get_logger, tracer
from libs.common.observability.tracing import producer_links
from libs.common.offline import SIGNALS, OfflineStore, signal_table
from libs.common.resilience import Policy
from libs.common.schemas import Signal
from libs.common.settings import Topics
from services.features import metrics
from services.features.core.updates import (
    TOO_LATE,
    Positioned,
    SourceBatch,
    ValidSignal,
    ViewUpdate,
    plans_by_source,
    source_staleness,
    split_by_source,
    update_views,
    verdicts,
)

log = get_logger(__name__)
# How often a fresh source is unmarked stale when this process did not mark it.
_UNMARK_EVERY_S = 5.0


@dataclass
class FeaturesHandler:
    """Signals of one batch -> states, vectors and offline rows; misfits dead-lettered.

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

    def __post_init__(self) -> None:
        self._plans = plans_by_source(self.definitions)
        # Only polled sources are ever re-emitted stale (services/ingest/sources).
        self._polled = frozenset(s.name for s in self.definitions.sources if s.poll)
        self._marked: set[str] = set()  # sources this process marked stale
        self._unmarked_at: dict[str, float] = {}

    async def on_valid_signals(
        self, batch: list[Delivery[ValidSignal]] | list[Delivery[Signal]]
    ) -> list[ViewUpdate]:
        """Handle one consumed batch; returns the views' updates.

        Order matters for at-least-once: the offline file and the dead letters are
        written first, the online states and vectors last in one transaction, and only
        then are offsets committed. States record the Kafka position they hold, so a
        redelivered batch changes nothing online; the offline file and the dead
        letters it rewrites carry the same names and ids.
        """
        links = producer_links(d.headers for d in batch)
        with tracer("features").start_as_current_span(
            f"{self.topics.valid} process", kind=trace.SpanKind.CONSUMER, links=links
        ):
            return await self._handle(batch)

    async def _handle(
        self, batch: list[Delivery[ValidSignal]] | list[Delivery[Signal]]
    ) -> list[ViewUpdate]:
        started = time.perf_counter()
        records = [
            Positioned(
                m if isinstance(m := d.message, ValidSignal) else ValidSignal.of(m),
                d.topic,
                d.partition,
                d.offset,
            )
            for d in batch
        ]
        delivery_of = {id(r): d for r, d in zip(records, batch, strict=True)}
        staleness = source_staleness(records, self._polled) if self._polled else {}
        # A stale re-emission (issue 9) repeats events applied when they were first
        # polled, at a new Kafka position: applying it would count them twice.
        records = self._without_stale(records)
        sources, rejected = split_by_source(records, self.definitions, self._plans)

        loaded = await self._load(sources)
        updates: list[ViewUpdate] = []
        offline_rows: list[Positioned] = []
        for source_batch, states in zip(sources, loaded, strict=True):
            mine = update_views(source_batch, states)
            updates.extend(mine)
            kept, too_late = verdicts(source_batch, mine)
            offline_rows.extend(r for r, k in zip(source_batch.records, kept, strict=True) if k)
            rejected.extend(self._too_late(source_batch, mine, too_late))
            metrics.record_applied(source_batch, mine)

        letters = [
            self.dead_letters.of(delivery_of[id(r)], why.reason, why.detail, source=r.signal.source)
            for r, why in rejected
        ]
        # The offline file and the dead letters must be durable before the states are
        # saved (a redelivery the states already hold is not written again); the file
        # is written in a thread while this task encodes the states and vectors.
        first = [asyncio.ensure_future(self.dead_letters.reject_many(letters))]
        if self.offline is not None and offline_rows:
            first.append(
                asyncio.ensure_future(self.files.call_blocking(self._append_offline, offline_rows))
            )
        try:
            await asyncio.sleep(0)  # the file write starts before the encoding
            state_items, vector_items = self._encode(updates)
        finally:
            # Plain gather, not a TaskGroup: the consume loop must see the error itself
            # (an outage is retried without limit), not an ExceptionGroup around it.
            done = await asyncio.gather(*first, return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        await self._save(state_items, vector_items, records)
        await self._mark_sources(staleness)
        LATENCY.labels("features", "on_valid_signals").observe(time.perf_counter() - started)
        log.debug("batch_done", records=len(batch), rejected=len(rejected))
        return updates

    async def _mark_sources(self, staleness: dict[str, float | None]) -> None:
        """Tell serve which sources are stale re-emissions now, and which are fresh again.

        A fresh source is unmarked when this process marked it, or at most every few
        seconds otherwise (another worker may have marked it): one small write, not
        one per batch.
        """
        now = time.monotonic()
        stale = {s: t for s, t in staleness.items() if t is not None}
        fresh = [
            s
            for s, t in staleness.items()
            if t is None
            and (
                s in self._marked
                or now - self._unmarked_at.get(s, -_UNMARK_EVERY_S) >= _UNMARK_EVERY_S
            )
        ]
        if not stale and not fresh:
            return
        await self.redis.call(self.store.mark_sources, stale, fresh)
        self._marked.update(stale)
        for s in fresh:
            self._marked.discard(s)
            self._unmarked_at[s] = now

    @staticmethod
    def _without_stale(records: list[Positioned]) -> list[Positioned]:
        if not any(r.signal.stale for r in records):
            return records
        for r in records:
            if r.signal.stale:
                metrics.STALE_SKIPPED.labels(r.signal.source).inc()
        return [r for r in records if not r.signal.stale]

    async def _load(self, sources: Sequence[SourceBatch]) -> list[list[States]]:
        """Every (view, entity) state the batch touches, in one round trip."""
        keys = [
            state_key(p.view.name, p.view.version, p.fingerprint, e)
            for b in sources
            for p in b.plans
            for e in b.entities
        ]
        blobs = await self.redis.call(self.store.load_states, keys) if keys else []
        out: list[list[States]] = []
        at = 0
        for b in sources:
            per_view = []
            for p in b.plans:
                per_view.append(codec.decode(p, blobs[at : at + len(b.entities)]))
                at += len(b.entities)
            out.append(per_view)
        return out

    def _encode(
        self, updates: Sequence[ViewUpdate]
    ) -> tuple[list[tuple[str, bytes]], list[tuple[str, int, str, StoredVector]]]:
        """The states and vectors of every entity a batch touched, ready to save."""
        now = time.time()
        states: list[tuple[str, bytes]] = []
        vectors: list[tuple[str, int, str, StoredVector]] = []
        for u in updates:
            view = u.plan.view
            prefix = state_key(view.name, view.version, u.plan.fingerprint, "")
            values = codec.encode(u.plan, u.states)
            newest = u.states.newest.tolist()
            for i in np.flatnonzero(u.states.has_events).tolist():
                entity = u.entities[i]
                states.append((prefix + entity, values[i]))
                vec = u.vectors[i]
                assert vec is not None
                vectors.append((view.name, view.version, entity, StoredVector(vec, newest[i], now)))
        return states, vectors

    async def _save(
        self,
        states: Sequence[tuple[str, bytes]],
        vectors: Sequence[tuple[str, int, str, StoredVector]],
        records: Sequence[Positioned],
    ) -> None:
        started = time.perf_counter()
        await self.redis.call(self.store.save, states, vectors)
        metrics.REDIS_WRITE.observe(time.perf_counter() - started)
        written = time.time()
        arrivals = [r.signal.arrival_ts for r in records]
        metrics.observe_freshness(written, arrivals)

    def _too_late(
        self, batch: SourceBatch, updates: Sequence[ViewUpdate], too_late: np.ndarray
    ) -> list[tuple[Positioned, RecordInvalid]]:
        if not too_late.any():
            return []
        newest = np.max([u.applied.newest_before for u in updates], axis=0)
        lateness = batch.source.allowed_lateness_s
        return [
            (
                r,
                RecordInvalid(
                    TOO_LATE,
                    detail=f"event time is {newest[i] - r.signal.ts:.1f} s "
                    f"before the entity's newest event, beyond the source's allowed lateness of "
                    f"{lateness:g} s; its windows are closed",
                ),
            )
            for i, r in enumerate(batch.records)
            if too_late[i]
        ]

    def _append_offline(self, records: list[Positioned]) -> None:
        # One file per partition, named by its first and last offset: a redelivery of
        # the same records (also to another instance after a rebalance) rewrites the
        # same file; readers drop rows of a position seen twice.
        assert self.offline is not None
        by_partition: dict[tuple[str, int], list[Positioned]] = {}
        for r in records:
            by_partition.setdefault((r.topic, r.partition), []).append(r)
        for (topic, partition), part in by_partition.items():
            signals = [r.signal for r in part]
            offsets = [r.offset for r in part]
            table = signal_table(
                event_ids=[s.event_id for s in signals],
                sources=[s.source for s in signals],
                schema_versions=[s.schema_version for s in signals],
                entity_ids=[s.entity_id for s in signals],
                ts=[s.ts for s in signals],
                fields=[s.fields for s in signals],
                arrival_ts=[s.arrival_ts for s in signals],
                topic=topic,
                partitions=[partition] * len(part),
                offsets=offsets,
            )
            self.offline.append_table(
                SIGNALS, table, name=f"{topic}-{partition}-{min(offsets)}-{max(offsets)}"
            )
