"""The prediction log: every answer goes to the predictions topic, off the request path.

`emit` only enqueues (with the request's trace context); one background task
serializes records, hands them to the aiokafka producer and counts acknowledgements
and failures. Kafka being slow or down never delays or fails a request; a full
queue drops the record and counts it (logged, never silent).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence

from tenacity import AsyncRetrying, wait_random_exponential

from libs.common.clients.kafka import KafkaPublisher, ensure_topics_of
from libs.common.observability.logging import get_logger
from libs.common.observability.tracing import inject_headers
from libs.common.schemas import PredictionMade
from libs.common.settings import Settings

log = get_logger(__name__)

_Record = tuple[str, PredictionMade, list[tuple[str, bytes]]]


class KafkaPredictionLog:
    """Fire-and-forget publisher of PredictionMade keyed by entity id."""

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str,
        max_pending: int = 10_000,
        timeout_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._topic = settings.topics.predictions
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._queue: asyncio.Queue[_Record] = asyncio.Queue(maxsize=max_pending)
        self._producer: KafkaPublisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._counts: Counter[str] = Counter()

    async def start(self) -> None:
        """Start the sender; it connects in the background and retries until it can."""
        self._task = asyncio.create_task(self._send_forever(), name="prediction-log")

    def emit(self, items: Sequence[tuple[str, PredictionMade]]) -> None:
        # Trace context is taken once per call, here, where the request's span is
        # current; serializing happens in the sender task, off the request path.
        headers = inject_headers(
            [
                ("producer", self._client_id.encode()),
                ("message-type", b"PredictionMade"),
                ("message-version", str(PredictionMade.MESSAGE_VERSION).encode()),
            ]
        )
        for key, message in items:
            try:
                self._queue.put_nowait((key, message, headers))
            except asyncio.QueueFull:
                self._counts["dropped"] += 1
                dropped = self._counts["dropped"]
                if dropped in (1, 10, 100) or dropped % 1000 == 0:
                    log.error("prediction_log_full", dropped=dropped, topic=self._topic)

    async def _connect(self) -> KafkaPublisher:
        # acks=1: a log record is worth less than a request's latency (DESIGN.md).
        async for attempt in AsyncRetrying(wait=wait_random_exponential(0.2, 10)):
            with attempt:
                await ensure_topics_of(self._settings, [self._topic])
                producer = KafkaPublisher(
                    self._settings.kafka_bootstrap,
                    client_id=self._client_id,
                    timeout_s=self._timeout_s,
                    acks=1,
                )
                try:
                    await producer.start(within_s=self._timeout_s)
                except Exception:
                    log.warning(
                        "prediction_log_connect_failed", bootstrap=self._settings.kafka_bootstrap
                    )
                    await producer.stop()
                    raise
                return producer
        raise AssertionError("unreachable: tenacity retries forever")

    async def _send_forever(self) -> None:
        self._producer = await self._connect()
        while True:
            key, message, headers = await self._queue.get()
            try:
                future = await self._producer.send_nowait(self._topic, message, key, headers)
            except Exception as exc:
                self._failed(exc)
                continue
            finally:
                self._queue.task_done()
            future.add_done_callback(self._on_ack)

    def _on_ack(self, future: asyncio.Future[object]) -> None:
        if future.cancelled():
            self._failed(asyncio.CancelledError())
        elif future.exception() is not None:
            self._failed(future.exception())
        else:
            self._counts["sent"] += 1

    def _failed(self, exc: BaseException | None) -> None:
        self._counts["failed"] += 1
        log.warning(
            "prediction_log_send_failed",
            error=repr(exc),
            topic=self._topic,
            failed=self._counts["failed"],
        )

    async def stop(self, flush_s: float = 5.0) -> None:
        """Give queued records `flush_s` to leave, then stop the producer."""
        if self._producer is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_s):
                    await self._queue.join()
                    await self._producer.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            await self._producer.stop()
        if not self._queue.empty():
            self._counts["dropped"] += self._queue.qsize()
            log.error("prediction_log_unsent_at_stop", dropped=self._queue.qsize())

    def stats(self) -> dict[str, int]:
        return {
            "queued": self._queue.qsize(),
            "sent": self._counts["sent"],
            "failed": self._counts["failed"],
            "dropped": self._counts["dropped"],
        }
