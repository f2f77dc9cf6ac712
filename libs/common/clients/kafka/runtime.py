"""The one Kafka runtime of a service process: its publisher and its supervised
consume loops, with typed subscriptions, dead-lettering middleware and liveness.

Delivery is at-least-once: offsets are committed only after the handler's effects
are durable, so handlers must be idempotent (they deduplicate by event id). What the
loop guarantees:

- a handler receives decoded messages of the topic's schema; an undecodable record is
  dead-lettered (reason `invalid_message`) before the handler sees the batch;
- a failing batch is retried with exponential backoff and jitter; an outage of a
  dependency (a transient error, see libs.common.resilience) is waited out without
  limit, any other error gives up after `max_attempts`, and then each record is tried
  alone: the ones that still fail are dead-lettered (`handler_failed`) and the
  partition moves on;
- while a batch is being handled, however long (a training run), its partitions are
  paused and the loop keeps polling, so the consumer stays in its group;
- a failed commit (a rebalance took the partition) or seek is logged and counted, never
  the end of the loop; the new owner gets the records again;
- a loop that dies anyway is restarted with backoff; one that keeps dying, or is
  cancelled, shows in `liveness()` by name (`/healthz` answers 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential

from libs.common.clients.kafka.admin import ensure_topics_of
from libs.common.clients.kafka.base import Outgoing, RawOutgoing
from libs.common.clients.kafka.consumer import make_consumer
from libs.common.clients.kafka.dead_letters import DeadLetters
from libs.common.clients.kafka.deliveries import Delivery
from libs.common.clients.kafka.publisher import KafkaPublisher
from libs.common.observability.logging import get_logger
from libs.common.observability.metrics import (
    COMMIT_FAILURES,
    CONSUMER_LAG,
    HANDLER_RETRIES,
    LOOP_RESTARTS,
    MESSAGES,
    PARTITION_LAG,
)
from libs.common.resilience import is_transient
from libs.common.schemas import Message
from libs.common.settings import Settings

log = get_logger(__name__)

Handler = Callable[[list[Delivery[Any]]], Awaitable[object]]
Schema = type[Message] | None  # None: the handler gets the raw bytes as `message`

# How long stop() waits for a loop to finish its batch and commit.
_STOP_GRACE_S = 10.0
_MAX_BACKOFF_S = 10.0


class _Interrupted(BaseException):
    """A retry cut short by shutdown: nothing is dead-lettered or committed, the batch is
    delivered again after restart. A BaseException, so handlers' `except Exception`
    (and the isolation step) never swallow it.
    """


@dataclass(frozen=True)
class Subscription:
    """What one consume loop reads and who handles it.

    Args:
        name: shown in logs, metrics and liveness ("features signals.valid").
        topics: each topic read, with the schema its records decode to.
        handler: receives the decoded batch; returns once its effects are durable.
        group: consumer group; None follows every partition from its end, uncommitted
            (every replica of serve sees every model event).
        max_attempts: attempts of a non-transient failure before records are isolated.
        decode: optional; turns a record's bytes into the handler's message in place of
            `schema.model_validate_json` (a faster decoder of the same schema); it must
            raise pydantic's ValidationError for what the schema refuses.
    """

    name: str
    topics: Mapping[str, Schema]
    handler: Handler
    group: str | None
    max_attempts: int = 5
    poll_ms: int = 500
    max_records: int = 500
    decode: Callable[[bytes], Any] | None = None


@dataclass
class _LoopState:
    subscription: Subscription
    task: asyncio.Task[None] | None = None
    last_poll: float = field(default_factory=time.monotonic)
    busy_since: float | None = None
    dead: str | None = None
    started: bool = False


class KafkaRuntime:
    """Owns a service's producer and consume loops; publishes (the Publisher protocol).

    Args:
        settings: broker address, partitions, replication, consumer limits.
        client_id: the service name (client id, metric and dead-letter stage).
    """

    def __init__(self, settings: Settings, *, client_id: str) -> None:
        self._settings = settings
        self.client_id = client_id
        self.publisher = KafkaPublisher(
            settings.kafka_bootstrap,
            client_id=client_id,
            timeout_s=max(10.0, settings.call_timeout_s),
            max_batch_bytes=settings.kafka_batch_bytes,
        )
        self.dead_letters = DeadLetters(self.publisher, settings.topics.dlq, client_id)
        self._loops: list[_LoopState] = []
        self._stop = asyncio.Event()
        self._probe: AIOKafkaClient | None = None
        self._probe_bootstrapped = False

    # publishing (Publisher protocol) -----------------------------------------------
    async def publish(self, topic: str, message: Message, *, key: str | None = None) -> None:
        await self.publisher.publish(topic, message, key=key)

    async def publish_many(self, items: Sequence[Outgoing]) -> None:
        await self.publisher.publish_many(items)

    async def publish_raw(self, topic: str, value: bytes, *, key: str | None = None) -> None:
        await self.publisher.publish_raw(topic, value, key=key)

    async def publish_raw_many(self, records: Sequence[RawOutgoing]) -> None:
        await self.publisher.publish_raw_many(records)

    # lifecycle ---------------------------------------------------------------------
    def subscribe(self, subscription: Subscription) -> None:
        """Register a consume loop; it starts with `start()` (or at once if started)."""
        state = _LoopState(subscription)
        self._loops.append(state)
        if self.publisher.started:
            self._spawn(state)

    async def start(self, topics: Sequence[str] | None = None, *, within_s: float = 30.0) -> None:
        """Create missing topics, start the producer, then every registered loop.

        Raises the broker's error when it does not answer within `within_s` (per step);
        calling start again then picks up where it failed.
        """
        s = self._settings
        await ensure_topics_of(s, topics, within_s=within_s)
        await self.publisher.start(within_s=within_s)
        self._probe = AIOKafkaClient(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"{self.client_id}-readiness",
            request_timeout_ms=int(s.call_timeout_s * 1000),
        )
        log.info("kafka_started", bootstrap=s.kafka_bootstrap, loops=len(self._loops))
        for state in self._loops:
            self._spawn(state)

    def _spawn(self, state: _LoopState) -> None:
        state.task = asyncio.create_task(
            self._supervise(state), name=f"consume {state.subscription.name}"
        )

    async def wait(self) -> None:
        """Return when `stop()` was called (entry modules await this)."""
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        """Let loops finish their batch (bounded), then stop the producer."""
        self._stop.set()
        tasks = [s.task for s in self._loops if s.task is not None]
        for state in self._loops:
            if state.task is not None and not state.started:
                state.task.cancel()  # still joining: holds no records
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=_STOP_GRACE_S)
            for task in late:
                task.cancel()  # its uncommitted batch is delivered again after restart
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._probe is not None:
            await self._probe.close()
            self._probe = None
        await self.publisher.stop()

    # health ------------------------------------------------------------------------
    def liveness(self) -> list[str]:
        """What is dead: one line per loop that stopped or stopped polling."""
        problems = []
        stale_after = max(60.0, self._settings.consumer_session_timeout_ms / 1000 * 3)
        for state in self._loops:
            name = state.subscription.name
            task = state.task
            if state.dead is not None:
                problems.append(f"consume loop {name!r} dead: {state.dead}")
            elif task is not None and task.done() and not self._stop.is_set():
                error = "cancelled" if task.cancelled() else repr(task.exception())
                problems.append(f"consume loop {name!r} stopped: {error}")
            elif task is not None and time.monotonic() - state.last_poll > stale_after:
                problems.append(
                    f"consume loop {name!r} has not polled for "
                    f"{time.monotonic() - state.last_poll:.0f}s"
                )
        return problems

    def all_started(self) -> bool:
        """True once every loop has joined its group (or taken its partitions)."""
        return bool(self._loops) and all(s.started for s in self._loops)

    async def ready(self) -> str | None:
        """None when ready, else the reason: the producer, the loops, the broker."""
        probe = self._probe
        if not self.publisher.started or probe is None:
            return "kafka producer not started"
        dead = self.liveness()
        if dead:
            return "; ".join(dead)
        try:
            async with asyncio.timeout(self._settings.call_timeout_s):
                if not self._probe_bootstrapped:
                    await probe.bootstrap()
                    self._probe_bootstrapped = True
                await probe.fetch_all_metadata()
        except (KafkaError, OSError, TimeoutError) as exc:
            return f"broker {self._settings.kafka_bootstrap} does not answer metadata: {exc!r}"
        return None

    # the supervised loop -----------------------------------------------------------
    async def _supervise(self, state: _LoopState) -> None:
        """Run the loop; restart it with backoff when it fails, up to a limit."""
        failures: list[float] = []
        name = state.subscription.name
        while not self._stop.is_set():
            try:
                await self._consume(state)
                return
            except (asyncio.CancelledError, _Interrupted):
                if self._stop.is_set():
                    return
                raise
            except Exception as exc:
                if self._stop.is_set():
                    return
                now = time.monotonic()
                failures = [t for t in failures if now - t < 300] + [now]
                LOOP_RESTARTS.labels(self.client_id, name).inc()
                log.exception("consume_loop_failed", loop=name, failures=len(failures))
                if len(failures) > 5:
                    state.dead = f"failed {len(failures)} times in 5 min, last: {exc!r}"
                    log.error("consume_loop_dead", loop=name, error=repr(exc))
                    return
                await asyncio.sleep(min(_MAX_BACKOFF_S, 0.5 * 2 ** len(failures)))

    async def _consume(self, state: _LoopState) -> None:
        sub = state.subscription
        s = self._settings
        consumer = make_consumer(
            s,
            list(sub.topics) if sub.group is not None else [],
            group_id=sub.group,
            client_id=self.client_id,
            max_records=sub.max_records,
        )

        def connecting(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            log.warning("consumer_connect_retry", loop=sub.name, error=repr(exc)[:300])

        try:
            async for attempt in AsyncRetrying(
                wait=wait_random_exponential(0.1, 5), before_sleep=connecting
            ):
                with attempt:
                    await consumer.start()
            if sub.group is None:
                await _follow_from_end(consumer, list(sub.topics))
            state.started = True
            log.info("consumer_started", loop=sub.name, group=sub.group, topics=list(sub.topics))
            while not self._stop.is_set():
                state.last_poll = time.monotonic()
                batches = await consumer.getmany(timeout_ms=sub.poll_ms)
                if batches:
                    await self._process(state, consumer, batches)
        finally:
            state.started = False
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _process(
        self,
        state: _LoopState,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[ConsumerRecord]],
    ) -> None:
        """Handle one polled batch off the poll loop, then commit what it covered."""
        sub = state.subscription
        work = asyncio.create_task(self._handle(sub, batches), name=f"handle {sub.name}")
        state.busy_since = time.monotonic()
        try:
            while True:
                # Most batches finish within one poll interval: wait on the work itself,
                # so a short batch costs no paused poll (a paused getmany always waits its
                # whole timeout, which capped every loop at about two batches a second).
                done, _ = await asyncio.wait({work}, timeout=sub.poll_ms / 1000)
                if done:
                    break
                # Long work: keep polling with every partition paused. This keeps the
                # member in its group however long the work takes (aiokafka's
                # max_poll_interval counts time outside getmany). Partitions a rebalance
                # just assigned are paused here too; anything fetched before is rewound.
                consumer.pause(*consumer.assignment())
                state.last_poll = time.monotonic()
                extra = await consumer.getmany(timeout_ms=sub.poll_ms)
                for tp, records in extra.items():
                    _guarded_seek(consumer, tp, records[0].offset, sub.name)
            await work  # re-raises a failure the handling could not absorb
        except BaseException:
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
            raise
        finally:
            state.busy_since = None
            consumer.resume(*consumer.assignment())
        if sub.group is not None:
            await self._commit(consumer, batches, sub.name)
        owned = consumer.assignment()
        for tp, records in batches.items():
            MESSAGES.labels(self.client_id, tp.topic, "ok").inc(len(records))
            if tp not in owned:
                continue  # revoked meanwhile: highwater() asserts ownership
            high = consumer.highwater(tp)
            if high is not None:
                lag = max(0, high - records[-1].offset - 1)
                CONSUMER_LAG.labels(self.client_id, tp.topic).set(lag)
                PARTITION_LAG.labels(self.client_id, tp.topic, str(tp.partition)).set(lag)

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[ConsumerRecord]],
        name: str,
    ) -> None:
        owned = consumer.assignment()
        offsets = {tp: recs[-1].offset + 1 for tp, recs in batches.items() if tp in owned}
        lost = [str(tp) for tp in batches if tp not in owned]
        if lost:
            # A rebalance moved these while the batch ran: their new owner reads the
            # records again (handlers are idempotent).
            COMMIT_FAILURES.labels(self.client_id, name, "revoked").inc()
            log.warning("commit_skipped_revoked", loop=name, partitions=lost)
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (KafkaError, AssertionError) as exc:
            # CommitFailedError (the group rebalanced), IllegalStateError (partition no
            # longer assigned) and broker errors: the batch is redelivered, not lost.
            COMMIT_FAILURES.labels(self.client_id, name, type(exc).__name__).inc()
            log.warning("commit_failed", loop=name, error=repr(exc))

    # handling: decode, retry, isolate -----------------------------------------------
    async def _handle(
        self, sub: Subscription, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        records = [r for part in batches.values() for r in part]
        deliveries, letters = self._decode(sub, records)
        await self._retrying(sub, lambda: self.dead_letters.reject_many(letters))
        if not deliveries:
            return
        try:
            await self._retrying(sub, lambda: sub.handler(deliveries))
            return
        except Exception as exc:
            if len(deliveries) == 1:
                await self._give_up(sub, deliveries[0], exc)
                return
            log.warning("batch_isolating", loop=sub.name, records=len(deliveries), error=repr(exc))
        # Find the poison: each record alone; the ones that still fail are dead letters.
        for delivery in deliveries:
            try:
                await self._retrying(sub, lambda d=delivery: sub.handler([d]))  # type: ignore[misc]
            except Exception as exc:
                await self._give_up(sub, delivery, exc)

    async def _give_up(self, sub: Subscription, delivery: Delivery[Any], exc: Exception) -> None:
        detail = f"failed {sub.max_attempts} attempts in {sub.name}: {exc!r}"
        await self._retrying(
            sub, lambda: self.dead_letters.reject(delivery, "handler_failed", detail)
        )

    async def _retrying(self, sub: Subscription, call: Callable[[], Awaitable[object]]) -> None:
        """Retry `call` with backoff: transient errors without limit (an outage is waited
        out, never dead-lettered), others up to `sub.max_attempts`.
        """

        def stop(rs: RetryCallState) -> bool:
            exc = rs.outcome.exception() if rs.outcome else None
            if self._stop.is_set():
                return True
            return (
                exc is not None and not is_transient(exc) and rs.attempt_number >= sub.max_attempts
            )

        def count(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            HANDLER_RETRIES.labels(self.client_id, sub.name).inc()
            log.warning(
                "handler_retry", loop=sub.name, attempt=rs.attempt_number, error=repr(exc)[:300]
            )

        try:
            async for attempt in AsyncRetrying(
                stop=stop,
                wait=wait_random_exponential(0.2, _MAX_BACKOFF_S),
                before_sleep=count,
                reraise=True,
            ):
                with attempt:
                    await call()
        except Exception as exc:
            if self._stop.is_set():
                raise _Interrupted() from exc
            raise

    def _decode(
        self, sub: Subscription, records: Sequence[ConsumerRecord]
    ) -> tuple[list[Delivery[Any]], list[Outgoing]]:
        good: list[Delivery[Any]] = []
        letters: list[Outgoing] = []
        decode = sub.decode
        for rec in records:
            schema = sub.topics.get(rec.topic)
            if schema is None:
                good.append(Delivery.of(rec, rec.value or b""))
                continue
            try:
                value = rec.value or b""
                decoded = schema.model_validate_json(value) if decode is None else decode(value)
                good.append(Delivery.of(rec, decoded))
            except ValidationError as exc:
                letters.append(
                    self.dead_letters.of(
                        Delivery.of(rec, rec.value or b""), "invalid_message", _short(exc)
                    )
                )
        return good, letters


async def _follow_from_end(consumer: AIOKafkaConsumer, topics: list[str]) -> None:
    """Assign every partition of `topics` and position at their end (no group)."""
    await consumer.topics()  # refresh metadata so new topics' partitions show
    tps = []
    for topic in topics:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            raise RuntimeError(f"topic {topic!r} has no partitions yet")
        tps += [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)


def _guarded_seek(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, name: str) -> None:
    try:
        consumer.seek(tp, offset)
    except (KafkaError, AssertionError, ValueError) as exc:
        # The partition went away in a rebalance: its new owner starts at the commit.
        log.warning("seek_failed", loop=name, partition=str(tp), error=repr(exc))


def _short(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
    )
