"""Choosing dead letters (reason, source, time range) and what replaying one did."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from libs.common.schemas import DeadLetter


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which dead letters an operator asked for; None matches everything.

    `since` is inclusive and `until` exclusive, on the time the record was rejected.
    """

    reason: str | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (self.reason is None or letter.reason == self.reason)
            and (self.source is None or letter.source == self.source)
            and (self.since is None or letter.event_time >= self.since)
            and (self.until is None or letter.event_time < self.until)
        )


class ReplayOutcome(StrEnum):
    """What replay did with one dead letter."""

    REPLAYED = "replayed"  # original bytes sent to the target topic, acknowledged
    ACCEPTED = "accepted"  # an outcome validated again and accepted
    REJECTED = "rejected"  # validated again and rejected (dead-lettered again)
    SKIPPED = "skipped"  # already replayed before: never twice


@dataclass(frozen=True, slots=True)
class ReplayLine:
    """One dead letter's replay, as the report lists it."""

    event_id: str
    source: str
    reason: str
    outcome: ReplayOutcome
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "event_id": self.event_id,
            "source": self.source,
            "reason": self.reason,
            "outcome": self.outcome.value,
            "detail": self.detail,
        }
