"""aiokafka adapters: a publisher, a batch consumer that commits after the effect,
topic creation, and dead-lettering of records that cannot be decoded.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import ValidationError
from tenacity import AsyncRetrying, stop_after_delay, wait_random_exponential

from libs.common.clients.kafka.base import Publisher
from libs.common.observability.logging import get_logger
from libs.common.observability.metrics import CONSUMER_LAG, DEAD_LETTERS, MESSAGES
from libs.common.observability.tracing import inject_headers
from libs.common.schemas import Message, RecordRejected

log = get_logger(__name__)
M = TypeVar("M", bound=Message)


class KafkaPublisher:
    """Publishes pydantic messages as JSON; headers carry trace context and schema.

    Tansu has no idempotent producer (DESIGN.md), so delivery is at-least-once and
    consumers deduplicate by event id.
    """

    def __init__(self, bootstrap: str, *, client_id: str, timeout_s: float = 10.0) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._started: AIOKafkaProducer | None = None

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._started is None:
            raise RuntimeError("KafkaPublisher used before start()")
        return self._started

    async def start(self) -> None:
        # Built here, not in __init__: aiokafka binds to the running event loop.
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            linger_ms=5,
            request_timeout_ms=int(self._timeout_s * 1000),
            enable_idempotence=False,
        )
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(30), wait=wait_random_exponential(0.1, 2), reraise=True
        ):
            with attempt:
                await producer.start()
        self._started = producer

    async def stop(self) -> None:
        if self._started is not None:
            await self._started.stop()
            self._started = None

    def _headers(self, message: Message | None) -> list[tuple[str, bytes]]:
        extra = [("producer", self._client_id.encode())]
        if message is not None:
            extra += [
                ("message-type", type(message).__name__.encode()),
                ("message-version", str(message.message_version).encode()),
            ]
        return inject_headers(extra)

    async def publish(self, topic: str, message: Message, *, key: str | None = None) -> None:
        await self._producer.send_and_wait(
            topic,
            message.to_bytes(),
            key=key.encode() if key else None,
            headers=self._headers(message),
        )

    async def publish_many(self, items: Sequence[tuple[str, Message, str | None]]) -> None:
        """Send many messages and wait for all acknowledgements (pipelined)."""
        futures = [
            await self._producer.send(
                topic, m.to_bytes(), key=k.encode() if k else None, headers=self._headers(m)
            )
            for topic, m, k in items
        ]
        if futures:
            await asyncio.gather(*futures)

    async def publish_raw(self, topic: str, value: bytes, *, key: str | None = None) -> None:
        await self._producer.send_and_wait(
            topic, value, key=key.encode() if key else None, headers=self._headers(None)
        )


async def ensure_topics(bootstrap: str, topics: Sequence[str], partitions: int) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(30), wait=wait_random_exponential(0.1, 2), reraise=True
    ):
        with attempt:
            await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()


def make_consumer(
    bootstrap: str,
    topics: Sequence[str],
    *,
    group_id: str | None,
    client_id: str,
    from_beginning: bool = True,
    session_timeout_ms: int = 10000,
) -> AIOKafkaConsumer:
    """A consumer with manual commits: offsets move only after the effect is durable.

    Tansu answers a JoinGroup only after half the session timeout, so the session
    timeout is also how long a group member waits to start (30 s -> 15 s).
    """
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        max_poll_records=500,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=min(3000, session_timeout_ms // 3),
    )


async def decode_or_dead_letter(
    records: Sequence[ConsumerRecord],
    model: type[M],
    publisher: Publisher,
    *,
    dlq_topic: str,
    stage: str,
) -> list[tuple[ConsumerRecord, M]]:
    """Decode each record into `model`; the ones that fail go to the dead-letter topic.

    This is the one place consumers handle undecodable input (STYLE.md section 8).
    """
    good: list[tuple[ConsumerRecord, M]] = []
    for rec in records:
        try:
            good.append((rec, model.model_validate_json(rec.value or b"")))
        except ValidationError as exc:
            reason = "invalid_message"
            key = rec.key.decode(errors="replace") if rec.key else None
            await publisher.publish(
                dlq_topic,
                RecordRejected.of(
                    rec.value or b"",
                    stage=stage,
                    source=rec.topic,
                    reason=reason,
                    detail=_short(exc),
                    topic=rec.topic,
                    key=key,
                ),
                key=rec.topic,
            )
            DEAD_LETTERS.labels(stage, reason).inc()
            MESSAGES.labels(stage, rec.topic, "dead_letter").inc()
    return good


def _short(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
    )


BatchHandler = Callable[[list[ConsumerRecord]], Awaitable[object]]


async def consume_batches(
    consumer: AIOKafkaConsumer,
    handler: BatchHandler,
    stop: asyncio.Event,
    *,
    service: str,
    commit: bool = True,
    poll_ms: int = 500,
) -> None:
    """Poll batches and hand them to `handler`; commit only after it returns.

    If the handler raises, nothing is committed and the consumer seeks back, so the
    batch is delivered again (at-least-once; handlers are idempotent).
    """
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=poll_ms)
        records = [r for part in batches.values() for r in part]
        if not records:
            continue
        try:
            await handler(records)
        except Exception:
            log.exception("batch_failed", service=service, records=len(records))
            for tp, part in batches.items():
                consumer.seek(tp, part[0].offset)
            await asyncio.sleep(1.0)
            continue
        if commit:
            await consumer.commit()
        for r in records:
            MESSAGES.labels(service, r.topic, "ok").inc()
        for tp, part in batches.items():
            high = consumer.highwater(tp)
            if high is not None:
                CONSUMER_LAG.labels(service, tp.topic).set(max(0, high - part[-1].offset - 1))


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set `stop` on SIGTERM/SIGINT so loops finish their batch and shut down cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def message_key(rec: ConsumerRecord) -> str | None:
    return rec.key.decode(errors="replace") if rec.key else None
