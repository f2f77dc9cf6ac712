"""Records in (HTTP bodies, signals.raw) -> validation -> valid topics or dead letters.

Every record ends either published to its topic or dead-lettered with its reason
and original bytes; handlers return only after the broker acknowledged both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import ConsumerRecord
from opentelemetry import trace

from libs.common.clients.kafka import Publisher, message_key
from libs.common.definitions import Definitions
from libs.common.errors import RejectedRecord
from libs.common.observability import DEAD_LETTERS, LATENCY, MESSAGES, get_logger, tracer
from libs.common.observability.tracing import producer_links
from libs.common.schemas import Message, RecordRejected, utcnow
from libs.common.settings import Topics
from services.ingest.core.batch import RecordItem
from services.ingest.core.validation import record_hints, validate_outcome, validate_signal
from services.ingest.core.verdicts import BatchResult, Judged, Rejected, Validator, judge
from services.ingest.errors import InvalidBody

SERVICE = "ingest"
HTTP = "http"
OUTCOMES = "outcomes"  # dead-letter source of rejected outcomes, so replay finds their endpoint

log = get_logger(__name__)

# (item, rejection) -> (source, original topic, original key) of its dead letter
Origin = Callable[[RecordItem, RejectedRecord], tuple[str, str | None, str | None]]


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
    """

    definitions: Definitions
    publisher: Publisher
    topics: Topics
    max_record_bytes: int = 64 * 1024
    dead_letter_max_bytes: int = 512 * 1024
    clock: Callable[[], datetime] = utcnow

    async def on_signals(self, items: Sequence[RecordItem]) -> BatchResult:
        """Signals posted over HTTP: valid ones to topics.valid keyed by entity id,
        the others to topics.dlq keyed by source (the record's source name, else "http").
        """
        with LATENCY.labels(SERVICE, "on_signals").time():
            judged = self._judge(items, self._signal_validator())
            await self._publish(judged, self.topics.valid, HTTP, _http_origin(HTTP))
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
                lambda i, e: (OUTCOMES, None, record_hints(i.record)[1]),
            )
            return BatchResult.of(judged)

    async def on_invalid_body(
        self, body: bytes, error: InvalidBody, *, source: str = HTTP
    ) -> BatchResult:
        """A body that is not JSON: dead-letter it whole, answer one rejection."""
        rejection = RejectedRecord(error.reason, detail=str(error))
        judged = Judged(rejected=[(RecordItem(0, body, body), rejection)])
        await self._publish(judged, self.topics.valid, HTTP, lambda i, e: (source, None, None))
        return BatchResult(rejected=[Rejected(0, rejection.reason, rejection.detail)])

    async def on_raw_records(self, records: Sequence[ConsumerRecord]) -> BatchResult:
        """Signals produced straight to signals.raw: the same validation as over HTTP.

        Dead letters keep the raw topic and key; their source is the record's source
        name, else the raw topic. The batch span links each producer's trace.
        """
        by_index = dict(enumerate(records))
        items = [RecordItem(i, r.value or b"", r.value or b"") for i, r in by_index.items()]

        def origin(item: RecordItem, _: RejectedRecord) -> tuple[str, str | None, str | None]:
            rec = by_index[item.index]
            return record_hints(item.raw)[0] or rec.topic, rec.topic, message_key(rec)

        links = producer_links(r.headers for r in records)
        topic = records[0].topic if records else self.topics.raw
        with (
            tracer(SERVICE).start_as_current_span(
                f"{topic} process", kind=trace.SpanKind.CONSUMER, links=links
            ),
            LATENCY.labels(SERVICE, "on_raw_records").time(),
        ):
            judged = self._judge(items, self._signal_validator())
            await self._publish(judged, self.topics.valid, topic, origin)
            return BatchResult.of(judged)

    # ------------------------------------------------------------------------------
    def _signal_validator(self) -> Validator:
        now = self.clock()
        return lambda r: validate_signal(r, self.definitions, now)

    def _judge(self, items: Sequence[RecordItem], validate: Validator) -> Judged:
        return judge(items, validate, max_record_bytes=self.max_record_bytes)

    async def _publish(
        self, judged: Judged, valid_topic: str, input_label: str, origin: Origin
    ) -> None:
        out: list[tuple[str, Message, str | None]] = [
            (valid_topic, message, getattr(message, "entity_id", None))
            for _, message in judged.valid
        ]
        for item, rejection in judged.rejected:
            source, topic, key = origin(item, rejection)
            out.append(
                (self.topics.dlq, self._dead_letter(item, rejection, source, topic, key), source)
            )
        await self._send(out)
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
        rejection: RejectedRecord,
        source: str,
        topic: str | None,
        key: str | None,
    ) -> RecordRejected:
        original, detail = item.raw, rejection.detail
        if len(original) > self.dead_letter_max_bytes:
            # Keeps the dead letter under the broker's message size. Only bodies that are
            # not JSON, or records far over max_record_bytes, are this large.
            detail = (
                f"{detail} (original truncated to its first {self.dead_letter_max_bytes}"
                f" of {len(original)} bytes)"
            )
            original = original[: self.dead_letter_max_bytes]
        return RecordRejected.of(
            original,
            stage=SERVICE,
            source=source,
            reason=rejection.reason,
            detail=detail,
            topic=topic,
            key=key,
        )

    async def _send(self, out: list[tuple[str, Message, str | None]]) -> None:
        many: Any = getattr(self.publisher, "publish_many", None)
        if many is not None:
            # KafkaPublisher.publish_many pipelines the sends in order, then awaits all
            # acknowledgements: one round trip per batch instead of one per record.
            await many(out)
            return
        for topic, message, key in out:
            await self.publisher.publish(topic, message, key=key)


def _http_origin(fallback: str) -> Origin:
    def origin(item: RecordItem, _: RejectedRecord) -> tuple[str, str | None, str | None]:
        source, entity_id = record_hints(item.record)
        return source or fallback, None, entity_id

    return origin
