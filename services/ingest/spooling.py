"""Publishing that survives a broker outage: straight to Kafka while it answers, else
into the FileSpool, drained in order by one background task once it answers again.

Order per entity holds because nothing overtakes the spool: while it holds (or is
appending) anything, new records go behind it, never to the broker directly.
A batch whose publish timed out is spooled while that publish goes on; if it lands
after all, the drainer skips its records. Delivery is still at-least-once: when the
producer gives up on it although the broker had it, or a drained batch was
acknowledged just before a crash, copies reach the topic with the same event_id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from libs.common.clients.kafka import KafkaRuntime, Publisher
from libs.common.clients.kafka.base import Outgoing
from libs.common.observability import get_logger
from libs.common.resilience import is_transient
from libs.common.schemas import Message
from services.ingest.core.spool_format import SpooledRecord
from services.ingest.settings import IngestSettings
from services.ingest.spool import FileSpool, SpoolBatch

log = get_logger(__name__)


def _message_classes() -> dict[str, type[Message]]:
    """Every Message class by name: a spooled record names its class to be rebuilt."""
    found: dict[str, type[Message]] = {}
    todo: list[type[Message]] = [Message]
    while todo:
        for sub in todo.pop().__subclasses__():
            found[sub.__name__] = sub
            todo.append(sub)
    return found


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
        # after all, (topic, event_id), the drainer skips instead of sending twice.
        self._late: set[asyncio.Future[None]] = set()
        self._delivered_late: set[tuple[str, str]] = set()

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
                self._track_late(sending, items)
                log.warning("broker_unanswered_spooling", records=len(items))
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("broker_unreachable_spooling", records=len(items), error=repr(exc))
        now = time.time()
        await self.spool.append(
            [SpooledRecord(t, k, type(m).__name__, m.to_bytes(), now) for t, m, k in items]
        )

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

    def _track_late(self, sending: asyncio.Future[None], items: Sequence[Outgoing]) -> None:
        def landed(done: asyncio.Future[None]) -> None:
            self._late.discard(done)
            if not done.cancelled() and done.exception() is None:
                self._delivered_late.update((t, m.event_id) for t, m, _ in items)

        self._late.add(sending)
        sending.add_done_callback(landed)

    async def _drain_once(self) -> None:
        if self._late:
            # Wait until each timed-out publish settles (the producer's request timeout
            # bounds it): both its copies and everything spooled after it stay in order.
            await asyncio.wait(set(self._late))
        batch: SpoolBatch = await self.spool.read_batch(self.drain_batch)
        if batch.records:
            kinds = _message_classes()
            items: list[Outgoing] = []
            for r in batch.records:
                message = kinds[r.kind].model_validate_json(r.value)
                if (r.topic, message.event_id) in self._delivered_late:
                    self._delivered_late.discard((r.topic, message.event_id))
                    continue
                items.append((r.topic, message, r.key))
            await self.publisher.publish_many(items)
            log.info(
                "spool_drained",
                records=len(items),
                skipped=len(batch.records) - len(items),
                left=self.spool.pending_records - len(batch.records),
            )
        await self.spool.commit(batch)


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
        settings.spool_dir or settings.data_dir / "spool",
        max_bytes=settings.spool_max_bytes,
        segment_bytes=settings.spool_segment_bytes,
    )
    return SpoolingPublisher(publisher, spool, publish_timeout_s=settings.spool_publish_timeout_s)


def spooled_health(
    kafka: KafkaRuntime, spooler: SpoolingPublisher
) -> tuple[Callable[[], Coroutine[Any, Any, str | None]], Callable[[], list[str]]]:
    """Readiness and liveness of an ingest that spools.

    Readiness is Kafka's, except that an unreachable broker is no reason while the spool
    has room: ingest still accepts (into the spool), so it stays in the load balancer
    and /readyz shows the spool (`SpoolingPublisher.status`). Liveness adds the drainer.
    """

    async def ready() -> str | None:
        reason = await kafka.ready()
        if reason is None or not kafka.publisher.started or kafka.liveness():
            return reason
        if spooler.spool.refusing:
            return f"{reason}; spool full ({spooler.spool.pending_bytes} bytes)"
        return None

    def alive() -> list[str]:
        return kafka.liveness() + spooler.liveness()

    return ready, alive
