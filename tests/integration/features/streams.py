"""Helpers of the features integration tests: settings, recorded streams, waiting, comparing."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from libs.common.clients.kafka import KafkaPublisher, ensure_topics
from libs.common.clients.kafka.reader import read_to_end
from libs.common.clients.redis import StoredVector
from libs.common.definitions import Definitions, load_definitions
from libs.common.features.engine import FeatureVector, States, apply, vectors
from libs.common.schemas import Signal
from services.features.core.updates import (
    Positioned,
    ValidSignal,
    plans_by_source,
    split_by_source,
)
from services.features.settings import FeaturesSettings

VIEW = "device_stats"
VIEWS = [(VIEW, 1)]
LATENESS_S = 3600.0  # signalops.yaml, source sensors


async def features_settings(make_settings: Any, **overrides: Any) -> FeaturesSettings:
    """FeaturesSettings of a test (unique topics, private data dir), topics created."""
    base = make_settings(**overrides).model_dump()
    settings = FeaturesSettings(**{**base, **overrides})
    await ensure_topics(settings.kafka_bootstrap, settings.topics.all(), settings.kafka_partitions)
    return settings


def env_of(settings: FeaturesSettings) -> dict[str, str]:
    """The SIGNALOPS_* environment that makes a process build these settings."""
    env = dict(os.environ)
    for key, value in settings.model_dump(mode="json", exclude={"admin_token"}).items():
        if value is None:
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                env[f"SIGNALOPS_{key.upper()}__{sub.upper()}"] = str(v)
        else:
            env[f"SIGNALOPS_{key.upper()}"] = str(value)
    env["SIGNALOPS_DATA_DIR"] = str(settings.data_dir.resolve())
    env["SIGNALOPS_DEFINITIONS"] = str(settings.definitions.resolve())
    return env


def signal(
    entity: str, ts: float, rng: random.Random, *, ingested_at: float | None = None
) -> Signal:
    """A sensors signal at event time `ts` with random fields (pressure sometimes absent)."""
    fields: dict[str, Any] = {
        "temperature": round(rng.uniform(10, 90), 3),
        "vibration": round(rng.uniform(0, 10), 3),
        "status": rng.choice(["ok", "ok", "warn", "error"]),
    }
    if rng.random() < 0.7:
        fields["pressure"] = round(rng.uniform(50, 300), 2)
    doc: dict[str, Any] = {
        "source": "sensors",
        "entity_id": entity,
        "event_time": datetime.fromtimestamp(ts, UTC).isoformat(),
        "fields": fields,
    }
    if ingested_at is not None:
        doc["ingested_at"] = datetime.fromtimestamp(ingested_at, UTC).isoformat()
    return Signal.model_validate(doc)


def history(
    entities: Sequence[str],
    per_entity: int,
    start: float,
    rng: random.Random,
    step_s: float = 90,
    *,
    too_late: float = 0.03,
) -> list[Signal]:
    """A recorded stream in arrival order: entities interleaved; per entity, event times
    mostly rising by about `step_s`, with out-of-order neighbours, late events (within
    the source's lateness) and too-late ones (beyond it, dead-lettered by the service).
    """
    streams: list[list[Signal]] = []
    for e in entities:
        ts = start + rng.uniform(0, step_s)
        out: list[Signal] = []
        for i in range(per_entity):
            ts += rng.uniform(0.3, 1.7) * step_s
            r = rng.random()
            if i > 3 and r < 0.08:
                event = ts - rng.uniform(0.2, 0.9) * LATENESS_S  # late, within lateness
            elif i > 3 and r < 0.08 + too_late:
                event = ts - LATENESS_S - rng.uniform(200, 2000)  # too late
            else:
                event = ts
            out.append(signal(e, event, rng))
        # Out-of-order arrivals: swap some neighbours.
        for i in range(1, len(out)):
            if rng.random() < 0.15:
                out[i - 1], out[i] = out[i], out[i - 1]
        streams.append(out)
    # Interleave the entities' streams, keeping each one's order.
    merged: list[Signal] = []
    cursors = [0] * len(streams)
    live = [i for i, s in enumerate(streams) if s]
    while live:
        k = rng.choice(live)
        merged.append(streams[k][cursors[k]])
        cursors[k] += 1
        if cursors[k] == len(streams[k]):
            live.remove(k)
    return merged


async def publish(settings: FeaturesSettings, signals: Sequence[Signal]) -> None:
    pub = KafkaPublisher(settings.kafka_bootstrap, client_id="test")
    await pub.start()
    try:
        await pub.publish_many([(settings.topics.valid, s, s.entity_id) for s in signals])
    finally:
        await pub.stop()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, every_s: float = 0.2
) -> None:
    """Poll `check` until true; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
        await asyncio.sleep(every_s)


class Committed:
    """The features group's committed offsets on signals.valid (records consumed)."""

    def __init__(self, settings: FeaturesSettings) -> None:
        self._settings = settings
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=settings.consumer_group
        )
        self._tps = [
            TopicPartition(settings.topics.valid, p) for p in range(settings.kafka_partitions)
        ]

    async def __aenter__(self) -> Committed:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def by_partition(self) -> dict[int, int]:
        """Partition -> the next offset the group consumes (0 before any commit)."""
        return {tp.partition: (await self._consumer.committed(tp)) or 0 for tp in self._tps}

    async def total(self) -> int:
        """Sum over partitions of the next offset to consume (offsets start at 0)."""
        return sum((await self.by_partition()).values())

    async def wait_for(self, records: int, timeout_s: float = 30.0) -> None:
        async def done() -> bool:
            return await self.total() >= records

        await eventually(done, timeout_s, f"{records} records committed", every_s=0.1)


@dataclass(frozen=True)
class Reference:
    """What the online store must hold after the records on signals.valid, computed in
    this process from the published records in Kafka order (not from any store)."""

    vectors: dict[str, FeatureVector]
    as_of: dict[str, float]
    accepted: dict[str, list[float]]  # entity -> event times of the events applied
    kept: set[tuple[int, int]]  # (partition, offset) of records the offline store keeps
    rejected: dict[tuple[int, int], str]  # (partition, offset) -> dead-letter reason


async def reference(settings: FeaturesSettings, definitions: Definitions) -> Reference:
    records: list[Positioned] = []
    rejected: dict[tuple[int, int], str] = {}
    for d in await read_to_end(settings.kafka_bootstrap, settings.topics.valid):
        try:
            s = Signal.from_bytes(d.value)
        except Exception:
            rejected[(d.partition, d.offset)] = "invalid_message"
            continue
        # Decoded by pydantic, not the service's fast decoder: an independent reading.
        records.append(Positioned(ValidSignal.of(s), d.topic, d.partition, d.offset))
    records.sort(key=lambda r: (r.partition, r.offset))
    batches, bad = split_by_source(records, definitions, plans_by_source(definitions))
    rejected.update({(r.partition, r.offset): why.reason for r, why in bad})
    out = Reference({}, {}, {}, set(), rejected)
    for batch in batches:
        (plan,) = [p for p in batch.plans if p.view.name == VIEW]
        states = States.empty(plan, len(batch.entities))
        applied = apply(plan, states, batch.events)
        for r, late in zip(batch.records, applied.too_late, strict=True):
            if late:
                out.rejected[(r.partition, r.offset)] = "too_late"
            else:
                out.kept.add((r.partition, r.offset))
        for i, (entity, vec) in enumerate(zip(batch.entities, vectors(plan, states), strict=True)):
            assert vec is not None
            out.vectors[entity] = vec
            out.as_of[entity] = float(states.newest[i])
            mine = applied.accepted & (batch.events.entity == i)
            out.accepted[entity] = batch.events.ts[mine].tolist()
    return out


def same_value(a: object, b: object, rel: float = 1e-9) -> bool:
    """Equal feature values: floats to `rel` (and 1e-9 absolute, for values near 0);
    None and NaN both mean missing."""
    missing_a = a is None or (isinstance(a, float) and math.isnan(a))
    missing_b = b is None or (isinstance(b, float) and math.isnan(b))
    if missing_a or missing_b:
        return missing_a and missing_b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-9)
    return a == b


def vector_mismatches(
    actual: FeatureVector | None, expected: FeatureVector | None, where: str
) -> list[str]:
    if actual is None or expected is None:
        return [] if actual is expected else [f"{where}: {actual} != {expected}"]
    names = sorted(set(actual) | set(expected))
    return [
        f"{where}.{n}: {actual.get(n)!r} != {expected.get(n)!r}"
        for n in names
        if not same_value(actual.get(n), expected.get(n))
    ]


def of_view(found: Iterable[dict[str, StoredVector]]) -> list[StoredVector | None]:
    return [f.get(VIEW) for f in found]


def definitions_of(settings: FeaturesSettings) -> Definitions:
    return load_definitions(settings.definitions)
