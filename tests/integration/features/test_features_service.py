"""The features service against a real broker and a real redis-server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from libs.common.clients.kafka import KafkaPublisher, ensure_topics
from libs.common.clients.redis import RedisFeatureStore, make_redis
from libs.common.offline import SIGNALS, OfflineStore
from libs.common.schemas import Signal
from services.features.main import run
from services.features.settings import FeaturesSettings


async def _wait_for(predicate, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.2)


async def test_signals_become_vectors_and_offsets_commit_after(
    kafka_bootstrap: str,
    redis_url: str,
    make_settings,
    unique: str,  # type: ignore[no-untyped-def]
) -> None:
    """Valid signals on the topic end as vectors in Redis, rows offline, then a commit."""
    base = make_settings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url)
    settings = FeaturesSettings(**base.model_dump())
    await ensure_topics(kafka_bootstrap, settings.topics.all(), settings.kafka_partitions)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))

    # Publish three signals for one entity, one of them twice: two records ingest
    # accepted at two offsets, so both count (only a redelivery of one offset is a
    # duplicate; the Kafka position guard skips it).
    pub = KafkaPublisher(kafka_bootstrap, client_id="test")
    await pub.start()
    t0 = datetime.now(UTC) - timedelta(minutes=3)
    entity = f"dev-{unique}"
    signals = [
        Signal.model_validate(
            {
                "source": "sensors",
                "entity_id": entity,
                "event_time": (t0 + timedelta(minutes=i)).isoformat(),
                "fields": {"temperature": 20.0 + i, "vibration": 2.0, "status": "ok"},
            }
        )
        for i in range(3)
    ]
    for s in [*signals, signals[-1]]:
        await pub.publish(settings.topics.valid, s, key=entity)
    await pub.stop()

    store = RedisFeatureStore(make_redis(redis_url))

    async def vector_complete():  # type: ignore[no-untyped-def]
        (found,) = await store.read_vectors([("device_stats", 1)], [entity])
        vec = found.get("device_stats")
        return vec if vec and vec.values["events_1h"] == 4.0 else None

    vec = await _wait_for(vector_complete)
    assert vec.values["temperature_last"] == 22.0
    assert vec.as_of == signals[-1].event_time.timestamp()

    # Offsets are committed for the group once the effect is durable.
    async def committed():  # type: ignore[no-untyped-def]
        c = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id="features")
        await c.start()
        try:
            tps = [TopicPartition(settings.topics.valid, p) for p in range(2)]
            total = 0
            for tp in tps:
                total += (await c.committed(tp)) or 0
            return total == 4
        finally:
            await c.stop()

    await _wait_for(committed)
    rows = OfflineStore(settings.offline_dir).read(SIGNALS)
    assert sorted(rows.column("event_id").to_pylist()) == sorted(
        s.event_id for s in [*signals, signals[-1]]
    )
    assert rows.num_rows == len(
        set(zip(rows["partition"].to_pylist(), rows["offset"].to_pylist(), strict=True))
    )
    stop.set()
    await asyncio.wait_for(task, 15)
    await store.close()
