"""Publishing that survives a broker outage: straight to Kafka while it answers, else
into the FileSpool, drained in order by one background task once it answers again.

Order per entity holds because nothing overtakes the spool: while it holds (or is
appending) anything, new records go behind it, never to the broker directly.
A batch whose publish timed out is spooled while that publish goes on; if it lands
after all, the drainer skips its records. Delivery is still at-least-once: when the
producer gives up on it although the broker had it, or a drained batch was
acknowledged just before a crash, copies reach the topic with the same event_id.
Each record is spooled with its serialised value and the headers it would have had
(schema, the request's trace context) and drained as those bytes, unparsed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    wait_random_exponential,
)

from libs.common.clients.kafka import KafkaRuntime, Publisher, RawOutgoing
from libs.common.clients.kafka.base import Outgoing, schema_headers
from libs.common.observability import get_logger
from libs.common.observability.tracing import inject_headers
from libs.common.resilience import is_transient
from libs.common.schemas import Message
from services.ingest.core.spool_format import SpooledRecord
from services.ingest.settings import IngestSettings
from services.ingest.spool import FileSpool, SpoolBatch

log = get_logger(__name__)


def spooled(items: Sequence[Outgoing], appended_at: float) -> list[SpooledRecord]:
    """`items` as spool records: the bytes and headers a direct publish would send.

    Called in the request's context, so the headers carry its trace context (the
    KafkaPublisher adds only its producer header when the drainer sends them).
    """
    trace = tuple(inject_headers())
    by_schema: dict[tuple[type[Message], int], tuple[tuple[str, bytes], ...]] = {}
    out = []
    for topic, message, key in items:
        schema = (type(message), message.message_version)
        headers = by_schema.get(schema)
        if headers is None:  # one tuple per schema, shared by the batch's records
            headers = by_schema[schema] = (*schema_headers(message), *trace)
        out.append(
            SpooledRecord(
                topic, key, type(message).__name__, message.to_bytes(), appended_at, headers
            )
        )
    return out


def outgoing(record: SpooledRecord) -> RawOutgoing:
    """How a spooled record is published: as stored. One spooled by the previous format
    (no headers) gets its schema name; its trace context was never kept."""
    headers = record.headers or (("message-type", record.kind.encode()),)
    return record.topic, record.key, record.value, headers


class SpoolingPublisher:
    """`publish_many` with the spool behind it, and the task that drains the spool.

    Args:
        publisher: the broker (the service's KafkaRuntime).
        spool: where records wait while the broker is unreachable.
        publish_timeout_s: a publish not acknowledged within this is taken as an outage
            and its batch spooled (the HTTP client is answered from the spool).
        drain_batch: records published per drain step.
        max_backoff_s: longest wait between two drain attempts while the broker is down.
    """

    def __init__(
        self,
        publisher: Publisher,
        spool: FileSpool,
        *,
        publish_timeout_s: float,
        drain_batch: int = 5000,
        max_backoff_s: float = 2.0,
    ) -> None:
        self.publisher = publisher
        self.spool = spool
        self.publish_timeout_s = publish_timeout_s
        self.drain_batch = drain_batch
        self.max_backoff_s = max_backoff_s
        self._drainer: asyncio.Task[None] | None = None
        # Publishes that timed out but may still be acknowledged; what they deliver
        # after all, (topic, the spooled value), the drainer skips instead of sending
        # twice. The value's bytes hold its event id, and compare without parsing.
        self._late: set[asyncio.Future[None]] = set()
        self._delivered_late: set[tuple[str, bytes]] = set()

    @property
    def spooling(self) -> bool:
        """True while records wait in the spool for the broker."""
        return not self.spool.idle

    async def publish_many(self, items: Sequence[Outgoing]) -> None:
        """Publish in order, or spool (fsynced) when the broker does not acknowledge.

        Raises:
            SpoolFull: the broker is unreachable and the spool has no room (HTTP 503).
            Exception: a non-transient publish error, unchanged.
        """
        if not items:
            return
        if self.spool.idle:
            sending = asyncio.ensure_future(self.publisher.publish_many(items))
            try:
                # Shielded: past the timeout the send goes on, and counts if it lands.
                await asyncio.wait_for(asyncio.shield(sending), self.publish_timeout_s)
                return
            except TimeoutError:
                records = spooled(items, time.time())
                self._track_late(sending, records)
                log.warning("broker_unanswered_spooling", records=len(items))
                await self.spool.append(records)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("broker_unreachable_spooling", records=len(items), error=repr(exc))
        await self.spool.append(spooled(items, time.time()))

    def status(self) -> dict[str, object]:
        """The spool's state for /readyz; empty while nothing is spooled."""
        if not self.spooling:
            return {}
        return {
            "spooling": {
                "records": self.spool.pending_records,
                "bytes": self.spool.pending_bytes,
                "oldest_age_s": round(self.spool.oldest_age_s(), 3),
                "max_bytes": self.spool.max_bytes,
            }
        }

    def liveness(self) -> list[str]:
        """The drainer, if it stopped (then the spool would never empty)."""
        task = self._drainer
        if task is not None and task.done():
            error = "cancelled" if task.cancelled() else repr(task.exception())
            return [f"spool drainer stopped: {error}"]
        return []

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open (recover) the spool and drain it in the background until exit.

        On exit the drainer is cancelled; a batch it had not committed stays in the
        spool and is published after the restart.
        """
        await self.spool.open()
        self._drainer = asyncio.create_task(self._drain(), name="ingest spool drainer")
        try:
            yield
        finally:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
            self._drainer = None
            await self.spool.close()

    async def _drain(self) -> None:
        while True:
            await self.spool.wait_pending()
            async for attempt in AsyncRetrying(
                wait=wait_random_exponential(0.1, self.max_backoff_s),
                retry=retry_if_exception_type(Exception),
                before_sleep=_log_retry,
            ):
                with attempt:
                    await self._drain_once()

    def _track_late(self, sending: asyncio.Future[None], records: list[SpooledRecord]) -> None:
        def landed(done: asyncio.Future[None]) -> None:
            self._late.discard(done)
            if not done.cancelled() and done.exception() is None:
                self._delivered_late.update((r.topic, r.value) for r in records)

        self._late.add(sending)
        sending.add_done_callback(landed)

    async def _drain_once(self) -> None:
        batch: SpoolBatch = await self.spool.read_batch(self.drain_batch)
        if batch.records:
            await self._publish(batch)
        await self.spool.commit(batch)

    async def _publish(self, batch: SpoolBatch) -> None:
        if self._late:
            # Wait until each timed-out publish settles (the producer's request timeout
            # bounds it): both its copies and everything spooled after it stay in order.
            await asyncio.wait(set(self._late))
        late = self._delivered_late
        items: list[RawOutgoing] = []
        for r in batch.records:
            if late and (r.topic, r.value) in late:
                late.discard((r.topic, r.value))
                continue
            items.append(outgoing(r))
        # Validated when accepted, stored as sent: published without parsing again.
        await self.publisher.publish_raw_many(items)
        log.info(
            "spool_drained",
            records=len(items),
            skipped=len(batch.records) - len(items),
            left=self.spool.pending_records - len(batch.records),
        )


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    # An outage is expected while spooling; anything else is a bug or a refused record.
    if exc is not None and not is_transient(exc):
        log.error("spool_drain_failed", error=repr(exc), attempt=state.attempt_number)
    else:
        log.info("spool_drain_waiting", error=repr(exc), attempt=state.attempt_number)


def spooling_publisher(publisher: Publisher, settings: IngestSettings) -> SpoolingPublisher:
    """The spool of `settings` (default under the data directory) in front of `publisher`."""
    spool = FileSpool(
        settings.spool_directory,
        max_bytes=settings.spool_max_bytes,
        segment_bytes=settings.spool_segment_bytes,
    )
    return SpoolingPublisher(publisher, spool, publish_timeout_s=settings.spool_publish_timeout_s)


class BrokerStart:
    """Starts the Kafka runtime in the background, again and again until the broker
    answers, so ingest serves into its spool through an outage that began before it
    started (a restart during the outage) instead of failing its start.

    Args:
        kafka: the runtime to start (topics, producer, the signals.raw loop).
        attempt_s: how long one start attempt waits for the broker.
    """

    def __init__(self, kafka: KafkaRuntime, *, attempt_s: float = 5.0) -> None:
        self.kafka = kafka
        self.attempt_s = attempt_s
        self.unreachable_since: float | None = None  # the first failed attempt

    async def run(self) -> None:
        async for attempt in AsyncRetrying(
            wait=wait_random_exponential(0.5, 5.0),
            retry=retry_if_exception(is_transient),
            before_sleep=self._failed,
        ):
            with attempt:
                await self.kafka.start(within_s=self.attempt_s)
        if self.unreachable_since is not None:
            log.info("broker_reached", after_s=round(time.time() - self.unreachable_since, 1))
        self.unreachable_since = None

    def _failed(self, state: RetryCallState) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = time.time()
        exc = state.outcome.exception() if state.outcome else None
        log.warning("broker_unreachable_at_start", error=repr(exc), attempt=state.attempt_number)

    def status(self) -> dict[str, object]:
        """For /readyz while the broker has not been reached since the start."""
        if self.unreachable_since is None:
            return {}
        return {
            "broker": {"reached": False, "since_s": round(time.time() - self.unreachable_since, 1)}
        }


def spooled_health(
    kafka: KafkaRuntime, spooler: SpoolingPublisher, start: BrokerStart
) -> tuple[Callable[[], Coroutine[Any, Any, str | None]], Callable[[], list[str]]]:
    """Readiness and liveness of an ingest that spools.

    Readiness is Kafka's, except that an unreachable broker is no reason while the spool
    has room: ingest still accepts (into the spool), so it stays in the load balancer
    and /readyz shows the spool (`SpoolingPublisher.status`). That holds from the start:
    once a first attempt to reach the broker failed, ingest is ready on its spool alone.
    Liveness adds the drainer.
    """

    async def ready() -> str | None:
        reason = await kafka.ready()
        if reason is None:
            return None
        if not kafka.publisher.started and start.unreachable_since is None:
            return reason  # still starting: not yet known to be an outage
        if kafka.publisher.started and kafka.liveness():
            return reason
        if spooler.spool.refusing:
            return f"{reason}; spool full ({spooler.spool.pending_bytes} bytes)"
        return None

    def alive() -> list[str]:
        return kafka.liveness() + spooler.liveness()

    return ready, alive
