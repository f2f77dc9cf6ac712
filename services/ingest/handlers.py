"""Records in (HTTP bodies, signals.raw) -> validation -> valid topics or dead letters.

Every record ends either published to its topic or dead-lettered with its reason
and original bytes; handlers return only after the broker acknowledged both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from opentelemetry import trace

from libs.common.clients.kafka import Delivery, Publisher, content_origin, dead_letter
from libs.common.definitions import Definitions
from libs.common.errors import RecordInvalid
from libs.common.observability import DEAD_LETTERS, LATENCY, MESSAGES, get_logger, tracer
from libs.common.observability.tracing import producer_links
from libs.common.schemas import DeadLetter, Message, utcnow
from libs.common.settings import Topics
from services.ingest.core.batch import RecordItem
from services.ingest.core.validation import record_hints, validate_outcome, validate_signal
from services.ingest.core.verdicts import BatchResult, Judged, Rejected, Validator, judge
from services.ingest.errors import InvalidBody

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
            source, topic, key, where = origin(item, rejection)
            letter = self._dead_letter(item, rejection, source, topic, key, where)
            out.append((self.topics.dlq, letter, source))
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
        )

    async def _send(self, out: list[tuple[str, Message, str | None]]) -> None:
        # Pipelined in order, then all acknowledgements awaited: one round trip per batch.
        await self.publisher.publish_many(out)


def _http_origin(fallback: str) -> Origin:
    def origin(item: RecordItem, _: RecordInvalid) -> tuple[str, str | None, str | None, str]:
        source, entity_id = record_hints(item.record)
        return source or fallback, None, entity_id, content_origin(item.raw, item.index)

    return origin
