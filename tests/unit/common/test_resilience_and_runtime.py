"""The resilience policy and the runtime's retry rules, without a broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from libs.common.clients.kafka import (
    DeadLetters,
    Delivery,
    KafkaRuntime,
    MemoryPublisher,
    Subscription,
)
from libs.common.clients.kafka.runtime import _Interrupted
from libs.common.errors import DependencyUnavailable
from libs.common.resilience import Policy
from libs.common.settings import Settings


async def test_bad_input_never_opens_the_breaker() -> None:
    """Errors of the input (ValueError, RuntimeError) pass through unchanged and leave
    the breaker closed; only outages count towards opening it."""
    policy = Policy("test-bad-input", timeout_s=1.0, attempts=1, fail_max=2)

    async def bad() -> None:
        raise RuntimeError("poison")

    for _ in range(5):
        with pytest.raises(RuntimeError, match="poison"):
            await policy.call(bad)
    assert policy.state == "closed"


async def test_outages_are_retried_then_open_the_breaker() -> None:
    """Timeouts are retried `attempts` times, then reported as DependencyUnavailable;
    after `fail_max` failed calls the breaker fails the next call without trying."""
    policy = Policy("test-outage", timeout_s=0.05, attempts=2, fail_max=2, max_wait_s=0.01)
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(1.0)

    with pytest.raises(DependencyUnavailable):
        await policy.call(slow)
    assert calls == 2  # one retry
    with pytest.raises(DependencyUnavailable):
        await policy.call(slow)
    assert policy.state == "open"
    before = calls
    with pytest.raises(DependencyUnavailable, match="circuit open"):
        await policy.call(slow)
    assert calls == before


def _record(offset: int) -> ConsumerRecord:
    value = b'{"model": "m", "entity_id": "e", "label": 1}'
    return ConsumerRecord("t", 0, offset, 0, 0, None, value, None, 0, len(value), [])


async def test_shutdown_during_an_outage_dead_letters_nothing() -> None:
    """A batch waiting out an outage when the service stops is interrupted: no dead
    letter, and the error escapes so nothing is committed (it is delivered again)."""
    runtime = KafkaRuntime(Settings(), client_id="test")
    sent = MemoryPublisher()
    runtime.dead_letters = DeadLetters(sent, "dlq", "test")

    async def down(batch: list[Delivery[object]]) -> None:
        raise DependencyUnavailable("redis", "connection refused")

    sub = Subscription("loop", {"t": None}, down, group="g", max_attempts=2)
    work = asyncio.create_task(
        runtime._handle(sub, {TopicPartition("t", 0): [_record(0), _record(1)]})
    )
    await asyncio.sleep(0.8)
    assert not work.done()  # past max_attempts: an outage is not a poison record
    runtime.request_stop()
    with pytest.raises(_Interrupted):
        await asyncio.wait_for(work, 15)
    assert not sent.sent
