"""Dead letters, built in one place, with ids derived from the original record.

A retried or redelivered batch builds the same dead letters again with the same
event ids, so consumers of the dead-letter topic see duplicates they can drop, never
new records.
"""

from __future__ import annotations

import base64
import hashlib

from libs.common.clients.kafka.base import Outgoing, Publisher
from libs.common.clients.kafka.deliveries import Delivery
from libs.common.observability.logging import get_logger
from libs.common.observability.metrics import DEAD_LETTERS, MESSAGES
from libs.common.schemas import DeadLetter, stable_id

log = get_logger(__name__)


def dead_letter_id(stage: str, reason: str, origin: str) -> str:
    """The event id of the dead letter of `origin` rejected at `stage` for `reason`."""
    return stable_id("dead-letter", stage, reason, origin)


def content_origin(original: bytes, position: int = 0) -> str:
    """The origin of a record that came over HTTP: its content and place in the body."""
    return f"sha256:{hashlib.sha256(original).hexdigest()}#{position}"


def dead_letter(
    original: bytes,
    *,
    stage: str,
    source: str,
    reason: str,
    origin: str,
    detail: str = "",
    topic: str | None = None,
    key: str | None = None,
    errors: list[str] | None = None,
) -> DeadLetter:
    """The dead letter of one rejected record, with its deterministic id; `errors`
    defaults to the detail (the one error a validator that stops at the first saw)."""
    return DeadLetter(
        event_id=dead_letter_id(stage, reason, origin),
        stage=stage,
        source=source or "unknown",
        reason=reason,
        detail=detail[:2000],
        errors=[e[:500] for e in (errors or [detail])[:50] if e],
        original_topic=topic,
        original_key=key,
        original_b64=base64.b64encode(original).decode(),
    )


class DeadLetters:
    """Publishes dead letters of consumed records for one stage (the runtime's middleware).

    Args:
        publisher: where they go.
        topic: the dead-letter topic.
        stage: the service rejecting them ("features", "retrain", ...).
    """

    def __init__(self, publisher: Publisher, topic: str, stage: str) -> None:
        self.publisher = publisher
        self.topic = topic
        self.stage = stage

    def of(
        self, delivery: Delivery[object], reason: str, detail: str = "", *, source: str = ""
    ) -> Outgoing:
        """The dead letter of `delivery` as an outgoing message (to publish with others)."""
        letter = dead_letter(
            delivery.value,
            stage=self.stage,
            source=source or delivery.topic,
            reason=reason,
            origin=delivery.origin,
            detail=detail,
            topic=delivery.topic,
            key=delivery.key,
        )
        return (self.topic, letter, letter.source)

    async def reject(
        self, delivery: Delivery[object], reason: str, detail: str = "", *, source: str = ""
    ) -> None:
        """Dead-letter one consumed record; returns once the broker has it."""
        await self.reject_many([self.of(delivery, reason, detail, source=source)])

    async def reject_many(self, letters: list[Outgoing]) -> None:
        if not letters:
            return
        await self.publisher.publish_many(letters)
        for _, letter, _ in letters:
            assert isinstance(letter, DeadLetter)
            DEAD_LETTERS.labels(self.stage, letter.reason).inc()
            if letter.original_topic:
                MESSAGES.labels(self.stage, letter.original_topic, "dead_letter").inc()
            log.warning(
                "dead_lettered",
                stage=self.stage,
                reason=letter.reason,
                topic=letter.original_topic,
                detail=letter.detail[:300],
            )
