"""The prediction log: every answer goes to the predictions topic, off the request path.

`emit` only enqueues (with the request's trace context). One background task takes
what is queued in batches, hands a batch to the aiokafka producer and waits for its
acknowledgements; a failed send is retried with exponential backoff and jitter, up to
`attempts`, for the records not yet acknowledged. Kafka being slow or down never
delays or fails a request: the queue fills meanwhile, and a full queue drops the
record. Drops and records given up after the last attempt are counted (`stats()`,
and Prometheus counters exported with Serve's metrics, alert
SignalopsPredictionLogLosing), never silent. A record sent twice after a retry is
harmless: consumers deduplicate by event id (the prediction id).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence

from tenacity import (
    AsyncRetrying,
    RetryError,
    stop_after_attempt,
    wait_random_exponential,
)

from libs.common.clients.kafka import KafkaPublisher, ensure_topics_of
from libs.common.observability.logging import get_logger
from libs.common.observability.tracing import inject_headers
from libs.common.schemas import PredictionMade
from libs.common.settings import Settings

log = get_logger(__name__)

_Record = tuple[str, PredictionMade, list[tuple[str, bytes]]]
OnCount = Callable[[str, int], None]
"""Told (outcome, n) for every sent, retried, failed and dropped count."""


class KafkaPredictionLog:
    """Fire-and-forget publisher of PredictionMade keyed by entity id.

    Args:
        settings: broker address and topic names.
        client_id: the producer's client id (the replica's).
        max_pending: records the queue holds while Kafka is slow or down.
        timeout_s: budget of one send attempt of a batch.
        batch_max: most records taken from the queue per send.
        attempts: send attempts per batch before its unacknowledged records are given up.
        on_count: told (outcome, n) per counted event, for Prometheus counters.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str,
        max_pending: int = 10_000,
        timeout_s: float = 10.0,
        batch_max: int = 500,
        attempts: int = 5,
        on_count: OnCount | None = None,
    ) -> None:
        self._settings = settings
        self._topic = settings.topics.predictions
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._batch_max = batch_max
        self._attempts = attempts
        self._on_count = on_count
        self._queue: asyncio.Queue[_Record] = asyncio.Queue(maxsize=max_pending)
        self._producer: KafkaPublisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._counts: Counter[str] = Counter()
        self._inflight: list[_Record] = []  # the batch being sent, not yet counted

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
                self._count("dropped")
                dropped = self._counts["dropped"]
                if dropped in (1, 10, 100) or dropped % 1000 == 0:
                    log.error("prediction_log_full", dropped=dropped, topic=self._topic)

    def _count(self, outcome: str, n: int = 1) -> None:
        if n <= 0:
            return
        self._counts[outcome] += n
        if self._on_count is not None:
            self._on_count(outcome, n)

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
                    # Bigger batches: aiokafka's default (16 KiB, 5 ms) cost 36 µs of CPU
                    # per record and fell behind under load (77% of records dropped at
                    # 1,000 predictions/s); 256 KiB and 20 ms halve it (issue 8).
                    linger_ms=20,
                    max_batch_bytes=256 * 1024,
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

    async def _take_batch(self) -> list[_Record]:
        batch = [await self._queue.get()]
        while len(batch) < self._batch_max and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _send_forever(self) -> None:
        self._producer = await self._connect()
        while True:
            batch = await self._take_batch()
            try:
                await self._send_batch(self._producer, batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _send_batch(self, producer: KafkaPublisher, batch: list[_Record]) -> None:
        """Send `batch`, retrying what was not acknowledged; count sent and given-up records."""
        pending = self._inflight = list(batch)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._attempts),
                wait=wait_random_exponential(multiplier=0.1, max=5.0),
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self._count("retried", len(pending))
                    pending = self._inflight = await self._send_once(producer, pending)
                    if pending:
                        raise _Unacknowledged(len(pending))
        except RetryError as exc:
            self._count("failed", len(pending))
            log.warning(
                "prediction_log_send_failed",
                error=repr(exc.last_attempt.exception()),
                topic=self._topic,
                given_up=len(pending),
                failed=self._counts["failed"],
            )
        self._inflight = []

    async def _send_once(self, producer: KafkaPublisher, records: list[_Record]) -> list[_Record]:
        """One attempt: hand every record to the producer, await the acknowledgements
        within the timeout; returns the records that were not acknowledged."""
        futures: list[asyncio.Future[object] | None] = []
        for key, message, headers in records:
            try:
                futures.append(await producer.send_nowait(self._topic, message, key, headers))
            except Exception:
                futures.append(None)
        live = [f for f in futures if f is not None]
        if live:
            await asyncio.wait(live, timeout=self._timeout_s)
        unacked = []
        sent = 0
        for record, future in zip(records, futures, strict=True):
            if future is not None and future.done() and not future.cancelled():
                if future.exception() is None:
                    sent += 1
                    continue
            elif future is not None:
                future.cancel()
            unacked.append(record)
        self._count("sent", sent)
        return unacked

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
        if not self._queue.empty() or self._inflight:
            unsent = self._queue.qsize() + len(self._inflight)
            self._inflight = []
            self._count("dropped", unsent)
            log.error("prediction_log_unsent_at_stop", dropped=unsent)

    def stats(self) -> dict[str, int]:
        return {
            "queued": self._queue.qsize(),
            "sent": self._counts["sent"],
            "retried": self._counts["retried"],
            "failed": self._counts["failed"],
            "dropped": self._counts["dropped"],
        }


class _Unacknowledged(Exception):
    """Some records of a batch were not acknowledged in time (retried)."""

    def __init__(self, n: int) -> None:
        super().__init__(f"{n} records not acknowledged")
