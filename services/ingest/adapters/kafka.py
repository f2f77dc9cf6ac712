"""The ingest service's Kafka side: producer, consumers, and the readiness probe."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from tenacity import AsyncRetrying, stop_after_delay, wait_random_exponential

from libs.common.clients.kafka import (
    KafkaPublisher,
    consume_batches,
    ensure_topics,
    make_consumer,
)
from libs.common.observability import get_logger
from libs.common.schemas import Message
from libs.common.settings import Settings

RecordsHandler = Callable[[list[ConsumerRecord]], Awaitable[object]]

log = get_logger(__name__)

# How long stop() waits for a consumer to finish its batch and commit.
_STOP_GRACE_S = 10.0


class KafkaRuntime:
    """Owns the producer and the consumer tasks of one service process; publishes
    through its producer (the Publisher protocol, plus pipelined publish_many).

    `ready()` is true only while the producer is started, every consumer task runs,
    and the broker answers a metadata request.
    """

    def __init__(self, settings: Settings, *, client_id: str = "ingest") -> None:
        # aiokafka clients bind to the running loop when built, so they are built in
        # start(); until then publishing fails and ready() says why.
        self._settings = settings
        self._client_id = client_id
        self._publisher: KafkaPublisher | None = None
        self._probe: AIOKafkaClient | None = None
        self._probe_bootstrapped = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._joined: set[asyncio.Task[None]] = set()

    async def start(self, topics: Sequence[str]) -> None:
        """Create missing topics and start the producer (each retried for 30 s)."""
        s = self._settings
        await ensure_topics(s.kafka_bootstrap, topics, s.kafka_partitions)
        publisher = KafkaPublisher(
            s.kafka_bootstrap, client_id=self._client_id, timeout_s=max(10.0, s.call_timeout_s)
        )
        await publisher.start()
        self._publisher = publisher
        log.info("kafka_started", bootstrap=s.kafka_bootstrap, topics=len(topics))
        self._probe = AIOKafkaClient(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"{self._client_id}-readiness",
            request_timeout_ms=int(s.call_timeout_s * 1000),
        )

    # Publisher protocol -------------------------------------------------------------
    def _started(self) -> KafkaPublisher:
        if self._publisher is None:
            raise KafkaConnectionError("kafka producer not started")
        return self._publisher

    async def publish(self, topic: str, message: Message, *, key: str | None = None) -> None:
        await self._started().publish(topic, message, key=key)

    async def publish_many(self, items: Sequence[tuple[str, Message, str | None]]) -> None:
        await self._started().publish_many(items)

    async def publish_raw(self, topic: str, value: bytes, *, key: str | None = None) -> None:
        await self._started().publish_raw(topic, value, key=key)

    def consume(
        self, topic: str, handler: RecordsHandler, *, group: str, session_timeout_ms: int = 10000
    ) -> None:
        """Run a consumer of `topic` in the background; offsets commit after `handler`."""
        consumer = make_consumer(
            self._settings.kafka_bootstrap,
            [topic],
            group_id=group,
            client_id=self._client_id,
            session_timeout_ms=session_timeout_ms,
        )
        task = asyncio.create_task(
            self._consume(consumer, topic, handler, group), name=f"consume {topic}"
        )
        self._tasks.append(task)

    async def _consume(
        self, consumer: AIOKafkaConsumer, topic: str, handler: RecordsHandler, group: str
    ) -> None:

        async def on_batch(records: list[ConsumerRecord]) -> None:
            await handler(records)

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(30), wait=wait_random_exponential(0.1, 2), reraise=True
            ):
                with attempt:
                    await consumer.start()
            current = asyncio.current_task()
            if current is not None:
                self._joined.add(current)
            log.info("consumer_started", topic=topic, group=group)
            await consume_batches(consumer, on_batch, self._stop, service=self._client_id)
        except Exception:
            log.exception("consumer_failed", topic=topic)
            raise
        finally:
            await consumer.stop()

    async def ready(self) -> str | None:
        """None when ready, else the reason (for GET /readyz)."""
        probe = self._probe
        if self._publisher is None or probe is None:
            return "kafka producer not started"
        for task in self._tasks:
            if task.done():
                error = None if task.cancelled() else task.exception()
                return f"consumer task {task.get_name()!r} stopped: {error!r}"
        try:
            async with asyncio.timeout(self._settings.call_timeout_s):
                if not self._probe_bootstrapped:
                    await probe.bootstrap()
                    self._probe_bootstrapped = True
                await probe.fetch_all_metadata()
        except (KafkaError, OSError, TimeoutError) as exc:
            return f"broker {self._settings.kafka_bootstrap} does not answer metadata: {exc!r}"
        return None

    async def stop(self) -> None:
        """Let consumers finish their batch, then stop the producer.

        A consumer still joining its group is cancelled at once (it holds no records);
        one that does not finish its batch within the grace period is cancelled too,
        and its uncommitted batch is delivered again after restart (at-least-once).
        """
        self._stop.set()
        for task in self._tasks:
            if task not in self._joined:
                task.cancel()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=_STOP_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._probe is not None:
            await self._probe.close()
        if self._publisher is not None:
            await self._publisher.stop()
            self._publisher = None
