"""The features service under faults, on the real broker and real redis-servers."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from libs.common.binaries import redis_command
from libs.common.clients.kafka import KafkaPublisher, ensure_topics
from libs.common.clients.kafka.reader import read_to_end
from libs.common.clients.redis import RedisFeatureStore, StoredVector, make_redis
from libs.common.errors import DependencyUnavailable
from libs.common.net import free_port, wait_for_port
from libs.common.schemas import DeadLetter, Signal
from libs.common.testing import paused
from services.features.main import run
from services.features.settings import FeaturesSettings

VIEW = [("device_stats", 1)]


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
        await asyncio.sleep(0.3)


def _start_redis(port: int, workdir: Path, **options: Any) -> subprocess.Popen[bytes]:
    """A redis-server as the embedded stack runs it (redis_command), on `port`."""
    proc = subprocess.Popen(
        redis_command(port, str(workdir), **options),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return proc


def _signals(prefix: str, entities: int, per_entity: int) -> list[Signal]:
    t0 = datetime.now(UTC) - timedelta(minutes=30)
    return [
        Signal.model_validate(
            {
                "source": "sensors",
                "entity_id": f"{prefix}-{e}",
                "event_time": (t0 + timedelta(seconds=10 * i)).isoformat(),
                "fields": {"temperature": 20.0 + i, "vibration": 1.0, "status": "ok"},
            }
        )
        for e in range(entities)
        for i in range(per_entity)
    ]


async def _publish(settings: FeaturesSettings, signals: list[Signal]) -> None:
    pub = KafkaPublisher(settings.kafka_bootstrap, client_id="test")
    await pub.start()
    try:
        await pub.publish_many([(settings.topics.valid, s, s.entity_id) for s in signals])
    finally:
        await pub.stop()


async def _all_vectors_complete(store: RedisFeatureStore, entities: list[str], events: int) -> bool:
    try:
        found = await store.read_vectors(VIEW, entities)
    except Exception:
        return False
    return all(
        f.get("device_stats") and f["device_stats"].values["events_1h"] == events for f in found
    )


async def _healthz(settings: FeaturesSettings) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(f"http://127.0.0.1:{settings.features_metrics_port}/healthz")
        return r.status_code


async def test_redis_paused_then_resumed_loses_nothing(
    make_settings, kafka_bootstrap: str, redis_server, unique: str
) -> None:  # type: ignore[no-untyped-def]
    """Redis frozen for 5 s while a backlog is consumed: the batch is retried as an
    outage (never dead-lettered), and after SIGCONT every entity's vector holds all of
    its events; the service stays alive throughout, with no restart.
    """
    settings = FeaturesSettings(
        **make_settings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_server.url).model_dump()
    )
    await ensure_topics(kafka_bootstrap, settings.topics.all(), settings.kafka_partitions)
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop))
    store = RedisFeatureStore(make_redis(redis_server.url))
    first = _signals(f"a-{unique}", 5, 4)
    later = _signals(f"b-{unique}", 20, 6)
    try:
        await _publish(settings, first)
        await eventually(
            lambda: _all_vectors_complete(store, sorted({s.entity_id for s in first}), 4),
            60,
            "first vectors",
        )
        with paused(redis_server.pid):
            await _publish(settings, later)
            await asyncio.sleep(5.0)
            assert await _healthz(settings) == 200  # waiting out an outage is alive
        await eventually(
            lambda: _all_vectors_complete(store, sorted({s.entity_id for s in later}), 6),
            60,
            "vectors after Redis resumed",
        )
        assert await _healthz(settings) == 200
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
        await store.close()
    letters = await read_to_end(kafka_bootstrap, settings.topics.dlq)
    assert letters == []


async def test_poison_signals_are_dead_lettered_once_the_rest_processed(
    make_settings, kafka_bootstrap: str, redis_url: str, unique: str
) -> None:  # type: ignore[no-untyped-def]
    """Undecodable bytes and a signal of an unknown source on signals.valid: each is
    dead-lettered exactly once with its reason; the good signals around them end as
    vectors, and the offsets move past them.
    """
    settings = FeaturesSettings(
        **make_settings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url).model_dump()
    )
    await ensure_topics(kafka_bootstrap, settings.topics.all(), settings.kafka_partitions)
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop))
    store = RedisFeatureStore(make_redis(redis_url))
    good = _signals(f"p-{unique}", 3, 2)
    unknown = good[0].model_copy(update={"source": "nowhere", "event_id": f"u-{unique}"})
    try:
        pub = KafkaPublisher(kafka_bootstrap, client_id="test")
        await pub.start()
        await pub.publish(settings.topics.valid, good[0], key=good[0].entity_id)
        await pub.publish_raw(settings.topics.valid, b"\xff\xfe garbage", key=good[0].entity_id)
        await pub.publish(settings.topics.valid, unknown, key=good[0].entity_id)
        await pub.publish_many([(settings.topics.valid, s, s.entity_id) for s in good[1:]])
        await pub.stop()
        entities = sorted({s.entity_id for s in good})
        await eventually(lambda: _all_vectors_complete(store, entities, 2), 60, "good vectors")
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
        await store.close()
    letters = [
        DeadLetter.from_bytes(d.value)
        for d in await read_to_end(kafka_bootstrap, settings.topics.dlq)
    ]
    assert sorted(d.reason for d in letters) == ["invalid_message", "unknown_source"]
    assert {d.original_topic for d in letters} == {settings.topics.valid}


async def test_redis_restart_keeps_the_online_state_and_features_resumes(
    make_settings, kafka_bootstrap: str, tmp_path: Path, unique: str
) -> None:  # type: ignore[no-untyped-def]
    """The embedded Redis configuration (append-only file in its data directory):
    vectors written before a Redis restart are there after it, and the features
    service, running throughout, writes new ones once Redis is back.
    """
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    def start_redis() -> subprocess.Popen[bytes]:
        return _start_redis(port, tmp_path, maxmemory_mb=64)

    redis_proc = start_redis()
    settings = FeaturesSettings(
        **make_settings(kafka_bootstrap=kafka_bootstrap, redis_url=url).model_dump()
    )
    await ensure_topics(kafka_bootstrap, settings.topics.all(), settings.kafka_partitions)
    stop = asyncio.Event()
    service = asyncio.create_task(run(settings, stop))
    before = _signals(f"r-{unique}", 4, 3)
    after = _signals(f"s-{unique}", 4, 3)
    try:
        await _publish(settings, before)
        store = RedisFeatureStore(make_redis(url))
        entities = sorted({s.entity_id for s in before})
        await eventually(lambda: _all_vectors_complete(store, entities, 3), 60, "vectors")
        await store.close()
        await asyncio.sleep(1.5)  # appendfsync everysec
        redis_proc.terminate()
        redis_proc.wait(timeout=20)
        await _publish(settings, after)  # consumed while Redis is down: retried
        await asyncio.sleep(2.0)
        redis_proc = start_redis()
        store = RedisFeatureStore(make_redis(url))
        assert await _all_vectors_complete(store, entities, 3), "state lost in the restart"
        await eventually(
            lambda: _all_vectors_complete(store, sorted({s.entity_id for s in after}), 3),
            60,
            "features resumed after the restart",
        )
        await store.close()
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
        redis_proc.terminate()
        redis_proc.wait(timeout=20)


async def test_full_redis_refuses_writes_with_a_metric_not_a_silent_drop(
    tmp_path: Path,
) -> None:
    """A Redis at its memory limit (noeviction) refuses writes: the store raises a
    transient DependencyUnavailable (the consume loop waits, nothing is evicted or
    dropped) and counts it in signalops_redis_oom_total, which is alerted on.
    """
    port = free_port()
    proc = _start_redis(port, tmp_path, maxmemory_mb=1, persist=False)
    store = RedisFeatureStore(make_redis(f"redis://127.0.0.1:{port}/0"))
    before = REGISTRY.get_sample_value("signalops_redis_oom_total") or 0.0
    big = {f"f{i}": float(i) for i in range(200)}
    try:
        with pytest.raises(DependencyUnavailable, match="out of memory"):
            for n in range(2000):
                await store.write_vectors(
                    [
                        ("device_stats", 1, f"e-{n}-{k}", StoredVector(big, 1.0, 1.0))
                        for k in range(20)
                    ]
                )
        assert (REGISTRY.get_sample_value("signalops_redis_oom_total") or 0.0) > before
    finally:
        await store.close()
        proc.terminate()
        proc.wait(timeout=20)
