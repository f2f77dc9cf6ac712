"""The aiokafka publisher: pydantic messages as JSON, trace context in the headers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from tenacity import AsyncRetrying, stop_after_delay, wait_random_exponential

from libs.common.clients.kafka.base import Outgoing, RawOutgoing, schema_headers
from libs.common.clients.kafka.batching import send_records
from libs.common.errors import DependencyUnavailable
from libs.common.observability.tracing import inject_headers
from libs.common.resilience import Policy
from libs.common.schemas import Message


class KafkaPublisher:
    """Publishes pydantic messages as JSON; headers carry trace context and schema.

    Every send runs under the "kafka" resilience policy: a timeout and a breaker that
    makes callers fail fast while the broker is down (consume loops then retry with
    backoff, HTTP answers 503). Tansu has no idempotent producer (DESIGN.md), so
    delivery is at-least-once and consumers deduplicate by event id.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str,
        timeout_s: float = 10.0,
        acks: int | str = "all",
        policy: Policy | None = None,
        linger_ms: int = 5,
        max_batch_bytes: int = 16384,
    ) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._acks = acks
        self._linger_ms = linger_ms
        self._max_batch_bytes = max_batch_bytes
        # One attempt: aiokafka already retries a send within request_timeout; a second
        # attempt would only double how long an HTTP client waits for its 503.
        self.policy = policy or Policy("kafka", timeout_s=timeout_s + 1, attempts=1)
        self._started: AIOKafkaProducer | None = None

    @property
    def started(self) -> bool:
        return self._started is not None

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._started is None:
            # Transient: a service may serve before the broker is reached (ingest spools).
            raise DependencyUnavailable("kafka", "the producer has not reached the broker yet")
        return self._started

    async def start(self, *, within_s: float = 30.0) -> None:
        # Built here, not in __init__: aiokafka binds to the running event loop.
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks=self._acks,
            linger_ms=self._linger_ms,
            max_batch_size=self._max_batch_bytes,
            request_timeout_ms=int(self._timeout_s * 1000),
            enable_idempotence=False,
        )
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(within_s), wait=wait_random_exponential(0.1, 2), reraise=True
            ):
                with attempt:
                    await producer.start()
        except BaseException:
            await producer.stop()  # its connections and tasks; a later start makes a new one
            raise
        self._started = producer

    async def stop(self) -> None:
        if self._started is not None:
            await self._started.stop()
            self._started = None

    def headers(self, message: Message | None) -> list[tuple[str, bytes]]:
        """Producer, schema and trace-context headers of one message."""
        extra = [("producer", self._client_id.encode())]
        if message is not None:
            extra += schema_headers(message)
        return inject_headers(extra)

    async def publish(self, topic: str, message: Message, *, key: str | None = None) -> None:
        await self.publish_many([(topic, message, key)])

    async def publish_many(self, items: Sequence[Outgoing]) -> None:
        """Send many messages in order, then wait for all acknowledgements (pipelined)."""
        if items:
            await self.policy.call(self._send_all, items)

    async def _send_all(self, items: Sequence[Outgoing]) -> None:
        # The headers depend on the message's type and version and the caller's trace
        # context only: built once per type for the whole call, not once per record.
        headers: dict[tuple[type[Message], int], list[tuple[str, bytes]]] = {}
        records = []
        for topic, m, k in items:
            kind = (type(m), m.message_version)
            h = headers.get(kind)
            if h is None:
                h = headers[kind] = self.headers(m)
            records.append((topic, k.encode() if k else None, m.to_bytes(), h))
        await send_records(self._producer, records)

    async def publish_raw(self, topic: str, value: bytes, *, key: str | None = None) -> None:
        async def send() -> None:
            await self._producer.send_and_wait(
                topic, value, key=key.encode() if key else None, headers=self.headers(None)
            )

        await self.policy.call(send)

    async def publish_raw_many(self, records: Sequence[RawOutgoing]) -> None:
        """Send serialised records in order, then wait for all acknowledgements.

        Like `publish_many` (same producer, pipelining and policy), but the values are
        sent as they are, and each record's headers are its own (schema and the trace
        context of the request that produced it) after this producer's header.
        """
        if records:
            await self.policy.call(self._send_raw_all, records)

    async def _send_raw_all(self, records: Sequence[RawOutgoing]) -> None:
        producer = ("producer", self._client_id.encode())
        await send_records(
            self._producer,
            (
                (topic, key.encode() if key else None, value, [producer, *headers])
                for topic, key, value, headers in records
            ),
        )

    async def send_nowait(
        self, topic: str, message: Message, key: str | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[object]:
        """Hand one message to the producer's buffer; the future resolves on acknowledgement.

        For fire-and-forget logs (serve's prediction log) that count acknowledgements
        themselves instead of waiting for them.
        """
        future: asyncio.Future[object] = await self._producer.send(
            topic, message.to_bytes(), key=key.encode() if key else None, headers=headers
        )
        return future

    async def flush(self) -> None:
        await self._producer.flush()
