"""Records in (HTTP bodies, signals.raw) -> validation -> valid topics or dead letters.

Every record ends either published to its topic or dead-lettered with its reason
and original bytes; handlers return only after the broker acknowledged both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka.errors import KafkaError
from opentelemetry import trace

from libs.common.clients.kafka import Delivery, Publisher, content_origin, dead_letter
from libs.common.definitions import Definitions
from libs.common.errors import DependencyUnavailable, RecordInvalid
from libs.common.observability import DEAD_LETTERS, LATENCY, MESSAGES, get_logger, tracer
from libs.common.observability.tracing import producer_links
from libs.common.schemas import DeadLetter, Message, Signal, utcnow
from libs.common.settings import Topics
from services.ingest.accounting import count_batch
from services.ingest.core.batch import RecordItem
from services.ingest.core.dedup import DedupWindow, NoDedupWindow, dedup_key, split_duplicates
from services.ingest.core.polled import validate_polled
from services.ingest.core.schema_drift import DriftTally
from services.ingest.core.validation import record_hints, validate_outcome, validate_signal
from services.ingest.core.verdicts import BatchResult, Judged, Rejected, Validator, judge
from services.ingest.errors import InvalidBody
from services.ingest.observation import SignalObserver
from services.ingest.spooling import SpoolingPublisher

SERVICE = "ingest"
HTTP = "http"
OUTCOMES = "outcomes"  # dead-letter source of rejected outcomes, so replay finds their endpoint

log = get_logger(__name__)

# (item, rejection) -> (source, original topic, original key, origin) of its dead
# letter; the origin (where the record sits, or its content) makes the letter's id.
Origin = Callable[[RecordItem, RecordInvalid], tuple[str, str | None, str | None, str]]


@dataclass
class IngestHandler:
    """Validates and publishes; one instance per service, shared by HTTP and Kafka input.

    Args:
        definitions: registered sources and models.
        publisher: where valid records and dead letters go.
        topics: topic names (valid, outcomes, dlq are written).
        max_record_bytes: larger records are rejected as too_large.
        dead_letter_max_bytes: a dead letter keeps at most this many original bytes.
        clock: the current time, for lateness checks.
        dedup: the window of records accepted recently (duplicates are not published).
        spool: publishes what arrives over HTTP, spooling it on disk while the broker
            is unreachable; None publishes straight to `publisher`.
        observer: schema drift, data quality and lateness of the signals taken; its
            schema-drift events go to topics.schema_events. None: not observed.
        ingest_version: the build stamped on accepted signals (lineage).
    """

    definitions: Definitions
    publisher: Publisher
    topics: Topics
    max_record_bytes: int = 64 * 1024
    dead_letter_max_bytes: int = 512 * 1024
    clock: Callable[[], datetime] = utcnow
    dedup: DedupWindow = field(default_factory=NoDedupWindow)
    spool: SpoolingPublisher | None = None
    observer: SignalObserver | None = None
    ingest_version: str | None = None

    async def on_signals(self, items: Sequence[RecordItem]) -> BatchResult:
        """Signals posted over HTTP: valid ones to topics.valid keyed by entity id,
        the others to topics.dlq keyed by source (the record's source name, else "http").
        """
        with LATENCY.labels(SERVICE, "on_signals").time():
            tally: DriftTally = Counter()
            judged = self._judge(items, self._signal_validator(tally))
            await self._publish(judged, self.topics.valid, HTTP, _http_origin(HTTP))
            await self._observe(judged, tally)
            return BatchResult.of(judged)

    async def on_outcomes(self, items: Sequence[RecordItem]) -> BatchResult:
        """Outcomes (labels) posted over HTTP: valid ones to topics.outcomes keyed by
        entity id, the others to topics.dlq keyed "outcomes".
        """
        now = self.clock()
        with LATENCY.labels(SERVICE, "on_outcomes").time():
            judged = self._judge(items, lambda r: validate_outcome(r, self.definitions, now))
            await self._publish(
                judged,
                self.topics.outcomes,
                HTTP,
                lambda i, e: (
                    OUTCOMES,
                    None,
                    record_hints(i.record)[1],
                    content_origin(i.raw, i.index),
                ),
            )
            return BatchResult.of(judged)

    async def on_invalid_body(
        self, body: bytes, error: InvalidBody, *, source: str = HTTP
    ) -> BatchResult:
        """A body that is not JSON: dead-letter it whole, answer one rejection."""
        rejection = RecordInvalid(error.reason, detail=str(error))
        judged = Judged(rejected=[(RecordItem(0, body, body), rejection)])
        await self._publish(
            judged,
            self.topics.valid,
            HTTP,
            lambda i, e: (source, None, None, content_origin(i.raw, i.index)),
        )
        return BatchResult(rejected=[Rejected(0, rejection.reason, rejection.detail)])

    async def on_raw_records(self, batch: Sequence[Delivery[bytes]]) -> BatchResult:
        """Signals produced straight to signals.raw: the same validation as over HTTP.

        Dead letters keep the raw topic and key; their source is the record's source
        name, else the raw topic. The batch span links each producer's trace.
        """
        by_index = dict(enumerate(batch))
        items = [RecordItem(i, d.value, d.value) for i, d in by_index.items()]

        def origin(item: RecordItem, _: RecordInvalid) -> tuple[str, str | None, str | None, str]:
            d = by_index[item.index]
            return record_hints(item.raw)[0] or d.topic, d.topic, d.key, d.origin

        links = producer_links(d.headers for d in batch)
        topic = batch[0].topic if batch else self.topics.raw
        with (
            tracer(SERVICE).start_as_current_span(
                f"{topic} process", kind=trace.SpanKind.CONSUMER, links=links
            ),
            LATENCY.labels(SERVICE, "on_raw_records").time(),
        ):
            tally: DriftTally = Counter()
            judged = self._judge(items, self._signal_validator(tally))
            # No spool: while the broker is down the consume loop holds its offsets.
            await self._publish(judged, self.topics.valid, topic, origin, spool=False)
            await self._observe(judged, tally)
            return BatchResult.of(judged)

    async def on_polled(self, source: str, items: Sequence[RecordItem]) -> list[Signal]:
        """Records mapped from a polled source's response (services/ingest/sources):
        validated and published as pushed ones, dead letters keyed by `source`.

        Returns:
            The accepted signals (the snapshot the poller caches).
        """
        now = self.clock()
        with LATENCY.labels(SERVICE, "on_polled").time():
            tally: DriftTally = Counter()
            version = self.ingest_version
            judged = self._judge(
                items,
                lambda r: validate_polled(
                    r, self.definitions, now, tally=tally, ingest_version=version
                ),
            )
            await self._publish(judged, self.topics.valid, f"poll:{source}", _http_origin(source))
            await self._observe(judged, tally)
        # Duplicates (records this source still reports) belong to the snapshot too.
        kept = sorted(judged.valid + judged.duplicates, key=lambda pair: pair[0].index)
        return [m for _, m in kept if isinstance(m, Signal)]

    async def on_stale(self, source: str, signals: Sequence[Signal]) -> None:
        """A down polled source's cached snapshot, re-emitted to topics.valid as it is
        (validated when it was polled, already marked stale by the poller).

        Not spooled: a copy re-emitted during a broker outage is worth nothing later,
        and the next poll emits a newer one.
        """
        await self._send([(self.topics.valid, s, s.entity_id) for s in signals], spool=False)
        MESSAGES.labels(SERVICE, f"poll:{source}", "stale").inc(len(signals))

    # ------------------------------------------------------------------------------
    def _signal_validator(self, tally: DriftTally | None = None) -> Validator:
        now = self.clock()
        version = self.ingest_version
        return lambda r: validate_signal(
            r, self.definitions, now, tally=tally, ingest_version=version
        )

    async def _observe(self, judged: Judged, tally: DriftTally) -> None:
        """Drift, quality and lateness of an acknowledged batch; schema-drift events out.

        The events are notifications: when the broker refuses them the batch stands (it
        is already published) and they are re-armed for the next sighting.
        """
        if self.observer is None:
            return
        events = self.observer.observe(judged, tally, self.clock())
        if not events:
            return
        try:
            # Behind the spool like the batch itself: during a broker outage the events
            # wait on disk instead of holding the request for the publisher's timeout.
            await self._send([(self.topics.schema_events, e, e.source) for e in events])
        except (KafkaError, TimeoutError, OSError, DependencyUnavailable) as exc:
            self.observer.drift.rearm(events)
            log.warning("schema_events_unpublished", events=len(events), error=repr(exc))
            return
        log.info(
            "schema_drift",
            events=[f"{e.source}:{e.kind}:{e.field}:{e.observed}" for e in events],
        )

    def _judge(self, items: Sequence[RecordItem], validate: Validator) -> Judged:
        return judge(items, validate, max_record_bytes=self.max_record_bytes)

    async def _publish(
        self,
        judged: Judged,
        valid_topic: str,
        input_label: str,
        origin: Origin,
        *,
        spool: bool = True,
    ) -> None:
        # Duplicates move from judged.valid to judged.duplicates in place, so the
        # callers' results report them.
        fresh_keys: list[str] = []
        if self.dedup.enabled:
            keys = [dedup_key(valid_topic, m) for _, m in judged.valid]
            seen = await self.dedup.seen(keys) or ()
            fresh = split_duplicates(judged, keys, seen)
            judged.valid, judged.duplicates = fresh.valid, fresh.duplicates
            # The keys of what is published: each once, in order (marked after the acks).
            fresh_keys = [k for k in dict.fromkeys(keys) if k not in seen]
        out: list[tuple[str, Message, str | None]] = [
            (valid_topic, message, getattr(message, "entity_id", None))
            for _, message in judged.valid
        ]
        for item, rejection in judged.rejected:
            source, topic, key, where = origin(item, rejection)
            letter = self._dead_letter(item, rejection, source, topic, key, where)
            out.append((self.topics.dlq, letter, source))
        await self._send(out, spool=spool)
        # Seen only once the broker has them: a batch answered 503 is not a duplicate
        # when its client retries it.
        if self.dedup.enabled:
            await self.dedup.mark(fresh_keys)
        count_batch(input_label, judged)
        MESSAGES.labels(SERVICE, input_label, "accepted").inc(len(judged.valid))
        if judged.rejected:
            MESSAGES.labels(SERVICE, input_label, "dead_letter").inc(len(judged.rejected))
            reasons = Counter(e.reason for _, e in judged.rejected)
            for reason, n in reasons.items():
                DEAD_LETTERS.labels(SERVICE, reason).inc(n)
            log.info(
                "records_rejected",
                input=input_label,
                accepted=len(judged.valid),
                rejected=len(judged.rejected),
                reasons=dict(reasons),
            )

    def _dead_letter(
        self,
        item: RecordItem,
        rejection: RecordInvalid,
        source: str,
        topic: str | None,
        key: str | None,
        where: str,
    ) -> DeadLetter:
        original, detail = item.raw, rejection.detail
        if len(original) > self.dead_letter_max_bytes:
            # Keeps the dead letter under the broker's message size. Only bodies that are
            # not JSON, or records far over max_record_bytes, are this large.
            detail = (
                f"{detail} (original truncated to its first {self.dead_letter_max_bytes}"
                f" of {len(original)} bytes)"
            )
            original = original[: self.dead_letter_max_bytes]
        return dead_letter(
            original,
            stage=SERVICE,
            source=source,
            reason=rejection.reason,
            origin=where,
            detail=detail,
            topic=topic,
            key=key,
            errors=rejection.errors,
        )

    async def _send(
        self, out: list[tuple[str, Message, str | None]], *, spool: bool = True
    ) -> None:
        # Pipelined in order, then all acknowledgements awaited: one round trip per batch.
        if spool and self.spool is not None:
            await self.spool.publish_many(out)  # behind the spool while it holds anything
        else:
            await self.publisher.publish_many(out)


def _http_origin(fallback: str) -> Origin:
    def origin(item: RecordItem, _: RecordInvalid) -> tuple[str, str | None, str | None, str]:
        source, entity_id = record_hints(item.record)
        return source or fallback, None, entity_id, content_origin(item.raw, item.index)

    return origin
