"""The shared Kafka runtime under faults, on the real broker (Tansu).

Each test runs a KafkaRuntime with one subscription whose handler records what it
saw, injects one fault (a poison record, undecodable bytes, a dependency outage, a
batch longer than max_poll_interval, a paused broker, a killed loop) and asserts what
the runtime promises: nothing lost, nothing double-applied in effect, nothing stuck.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import Field

from libs.common.clients.kafka import Delivery, KafkaPublisher, KafkaRuntime, Subscription
from libs.common.clients.kafka.reader import read_to_end
from libs.common.errors import DependencyUnavailable
from libs.common.schemas import DeadLetter, Message
from libs.common.settings import Settings
from libs.common.testing import paused


class Item(Message):
    """A test message: `n` numbers it, `poison` makes the handler fail on it."""

    n: int
    poison: bool = False
    note: str = Field("", max_length=100)


class Effects:
    """What a handler did: how often each item was applied (its 'effect')."""

    def __init__(self) -> None:
        self.applied: Counter[int] = Counter()
        self.batches = 0

    def distinct(self) -> set[int]:
        return set(self.applied)


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
        await asyncio.sleep(0.2)


@pytest.fixture(name="settings")
def _settings(make_settings, kafka_bootstrap: str) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(
        kafka_bootstrap=kafka_bootstrap,
        consumer_max_attempts=3,
        consumer_session_timeout_ms=6000,
    )


async def _publish(settings: Settings, topic: str, items: list[Item]) -> None:
    pub = KafkaPublisher(settings.kafka_bootstrap, client_id="test-producer")
    await pub.start()
    try:
        await pub.publish_many([(topic, i, str(i.n % 7)) for i in items])
    finally:
        await pub.stop()


async def _dead_letters(settings: Settings) -> list[DeadLetter]:
    return [
        DeadLetter.from_bytes(d.value)
        for d in await read_to_end(settings.kafka_bootstrap, settings.topics.dlq)
    ]


async def _committed(settings: Settings, topic: str, group: str) -> int:
    c = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group)
    await c.start()
    try:
        total = 0
        for p in range(settings.kafka_partitions):
            total += (await c.committed(TopicPartition(topic, p))) or 0
        return total
    finally:
        await c.stop()


def _runtime(
    settings: Settings, handler: Callable[[list[Delivery[Any]]], Awaitable[None]], group: str
) -> KafkaRuntime:
    runtime = KafkaRuntime(settings, client_id="test-service")
    runtime.subscribe(
        Subscription(
            name="test loop",
            topics={settings.topics.valid: Item},
            handler=handler,
            group=group,
            max_attempts=settings.consumer_max_attempts,
        )
    )
    return runtime


async def test_poison_record_is_dead_lettered_once_and_the_partition_moves_on(
    settings: Settings, unique: str
) -> None:
    """A record the handler always fails on: retried N times, isolated, dead-lettered
    once with the reason; every other record of its batch and partition is applied, and
    the offsets are committed past it.
    """
    effects = Effects()
    attempts_on_poison = 0

    async def handler(batch: list[Delivery[Item]]) -> None:
        nonlocal attempts_on_poison
        effects.batches += 1
        if any(d.message.poison for d in batch):
            attempts_on_poison += 1
            raise ValueError("cannot handle a poison item")
        for d in batch:
            effects.applied[d.message.n] += 1

    topic, group = settings.topics.valid, f"g-{unique}"
    items = [Item(n=n, poison=(n == 13)) for n in range(40)]
    runtime = _runtime(settings, handler, group)
    await runtime.start()
    try:
        await _publish(settings, topic, items)
        good = {i.n for i in items if not i.poison}
        await eventually(lambda: effects.distinct() == good, 60, "every good item applied")
        await eventually(
            lambda: _committed_is(settings, topic, group, len(items)), 30, "offsets committed"
        )
        assert runtime.liveness() == []
    finally:
        await runtime.stop()
    letters = [d for d in await _dead_letters(settings) if d.original_topic == topic]
    assert len(letters) == 1
    [letter] = letters
    assert letter.reason == "handler_failed" and "poison" in letter.detail
    assert Item.from_bytes(letter.original).n == 13
    # Tried as part of its batch (max_attempts), then alone (max_attempts), no more.
    n = settings.consumer_max_attempts
    assert n <= attempts_on_poison <= 2 * n


async def _committed_is(settings: Settings, topic: str, group: str, n: int) -> bool:
    return await _committed(settings, topic, group) == n


async def test_undecodable_record_is_dead_lettered_before_the_handler(
    settings: Settings, unique: str
) -> None:
    """Bytes that are not the topic's schema never reach the handler: one dead letter
    (`invalid_message`, original bytes kept), the rest of the batch handled.
    """
    effects = Effects()

    async def handler(batch: list[Delivery[Item]]) -> None:
        for d in batch:
            assert isinstance(d.message, Item)
            effects.applied[d.message.n] += 1

    topic = settings.topics.valid
    runtime = _runtime(settings, handler, f"g-{unique}")
    await runtime.start()
    try:
        pub = KafkaPublisher(settings.kafka_bootstrap, client_id="test-producer")
        await pub.start()
        await pub.publish(topic, Item(n=1), key="a")
        await pub.publish_raw(topic, b"\x00 not json", key="a")
        await pub.publish_raw(topic, b'{"n": "not a number"}', key="a")
        await pub.publish(topic, Item(n=2), key="a")
        await pub.stop()
        await eventually(lambda: effects.distinct() == {1, 2}, 60, "good items applied")
    finally:
        await runtime.stop()
    letters = [d for d in await _dead_letters(settings) if d.original_topic == topic]
    assert sorted(d.original for d in letters) == [b"\x00 not json", b'{"n": "not a number"}']
    assert {d.reason for d in letters} == {"invalid_message"}
    assert len({d.event_id for d in letters}) == 2


async def test_dependency_outage_is_waited_out_never_dead_lettered(
    settings: Settings, unique: str
) -> None:
    """While a dependency is down (a transient error), the batch is retried with backoff
    beyond max_attempts; when it is back everything is applied, nothing dead-lettered.
    """
    effects = Effects()
    down_until = time.monotonic() + 6.0
    failures = 0

    async def handler(batch: list[Delivery[Item]]) -> None:
        nonlocal failures
        if time.monotonic() < down_until:
            failures += 1
            raise DependencyUnavailable("redis", "connection refused")
        for d in batch:
            effects.applied[d.message.n] += 1

    topic = settings.topics.valid
    runtime = _runtime(settings, handler, f"g-{unique}")
    await runtime.start()
    try:
        await _publish(settings, topic, [Item(n=n) for n in range(20)])
        await eventually(lambda: effects.distinct() == set(range(20)), 60, "all applied")
        assert runtime.liveness() == []
    finally:
        await runtime.stop()
    assert failures > settings.consumer_max_attempts  # retried past the poison limit
    assert not [d for d in await _dead_letters(settings) if d.original_topic == topic]


async def test_batch_longer_than_max_poll_interval_is_handled_once(
    make_settings, kafka_bootstrap: str, unique: str
) -> None:  # type: ignore[no-untyped-def]
    """A handler that runs 3x max_poll_interval (a training run): the partition is paused
    while the loop keeps polling, so the member stays in its group, the batch commits,
    and no record is delivered twice.
    """
    settings = make_settings(
        kafka_bootstrap=kafka_bootstrap,
        consumer_max_poll_interval_ms=2000,
        consumer_session_timeout_ms=6000,
    )
    effects = Effects()

    async def handler(batch: list[Delivery[Item]]) -> None:
        effects.batches += 1
        if effects.batches == 1:
            await asyncio.sleep(6.0)
        for d in batch:
            effects.applied[d.message.n] += 1

    topic, group = settings.topics.valid, f"g-{unique}"
    runtime = _runtime(settings, handler, group)
    await runtime.start()
    try:
        await _publish(settings, topic, [Item(n=n) for n in range(10)])
        await eventually(lambda: effects.distinct() == set(range(10)), 60, "all applied")
        await eventually(lambda: _committed_is(settings, topic, group, 10), 30, "committed")
        await asyncio.sleep(3.0)  # a redelivery, if any, would land now
        assert runtime.liveness() == []
    finally:
        await runtime.stop()
    assert max(effects.applied.values()) == 1, effects.applied


async def test_broker_paused_under_load_loses_nothing_and_resumes(
    settings: Settings, kafka_broker, unique: str
) -> None:  # type: ignore[no-untyped-def]
    """The broker frozen (SIGSTOP) for 10 s while items are produced and consumed: after
    SIGCONT the same loop, without a restart, applies every item that was acknowledged.
    """
    effects = Effects()

    async def handler(batch: list[Delivery[Item]]) -> None:
        for d in batch:
            effects.applied[d.message.n] += 1

    topic = settings.topics.valid
    runtime = _runtime(settings, handler, f"g-{unique}")
    await runtime.start()
    pub = KafkaPublisher(settings.kafka_bootstrap, client_id="test-load", timeout_s=3.0)
    await pub.start()
    acknowledged: set[int] = set()

    async def produce(first: int, count: int) -> None:
        for n in range(first, first + count):
            try:
                await pub.publish(topic, Item(n=n), key=str(n % 5))
                acknowledged.add(n)
            except DependencyUnavailable:
                pass  # not acknowledged: the producer's caller would retry or spool
            await asyncio.sleep(0.01)

    try:
        await produce(0, 100)
        loading = asyncio.create_task(produce(100, 400))
        with paused(kafka_broker.pid):
            await asyncio.sleep(10.0)
        await loading
        await produce(500, 100)
        await eventually(
            lambda: acknowledged <= effects.distinct(), 90, "every acknowledged item applied"
        )
        assert runtime.liveness() == []
        assert 550 <= len(acknowledged)  # most sends outside the pause were acknowledged
    finally:
        await pub.stop()
        await runtime.stop()


async def test_killed_consume_loop_fails_liveness_by_name(settings: Settings, unique: str) -> None:
    """A loop task that is gone is a failed liveness check naming the loop, never a zombie."""

    async def handler(batch: list[Delivery[Item]]) -> None:
        return None

    runtime = _runtime(settings, handler, f"g-{unique}")
    await runtime.start()
    try:
        await eventually(runtime.all_started, 30, "loop joined")
        assert runtime.liveness() == []
        [task] = [t for t in asyncio.all_tasks() if t.get_name() == "consume test loop"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        [problem] = runtime.liveness()
        assert "test loop" in problem and "stopped" in problem
        assert "test loop" in (await runtime.ready() or "")
    finally:
        await runtime.stop()
