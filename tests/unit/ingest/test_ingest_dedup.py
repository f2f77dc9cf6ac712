"""Idempotency without Redis: content ids of equal instants are equal, and the handler
drops duplicates (window and same batch), answers them apart and counts every record."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from libs.common.clients.kafka import MemoryPublisher
from libs.common.definitions import Definitions
from libs.common.schemas import DeadLetter, Outcome, Signal
from libs.common.schemas.base import canonical_time
from libs.common.settings import Topics
from services.ingest.accounting import OUTCOMES, RECEIVED
from services.ingest.core.batch import RecordItem
from services.ingest.core.dedup import MemoryDedupWindow
from services.ingest.handlers import IngestHandler

instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)


def spellings(at: datetime, tz: timezone) -> list[str]:
    """Ways a client may write the instant `at`: Z, an offset, zero fractions."""
    local = at.astimezone(tz)
    return [
        at.isoformat().replace("+00:00", "Z"),
        local.isoformat(),
        local.isoformat(timespec="microseconds"),
        at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
    ]


@given(at=instants, tz=offsets)
def test_equal_instants_give_equal_content_ids(at: datetime, tz: timezone) -> None:
    """A signal and an outcome resent with the same instant written differently keep one id."""
    ids = {
        Signal.model_validate(
            {"source": "s", "entity_id": "e", "event_time": t, "fields": {"x": 1.0}}
        ).event_id
        for t in spellings(at, tz)
    }
    assert len(ids) == 1
    outcome_ids = {
        Outcome.model_validate(
            {"model": "m", "entity_id": "e", "event_time": t, "label": 1}
        ).event_id
        for t in spellings(at, tz)
    }
    assert len(outcome_ids) == 1


@given(a=instants, b=instants)
def test_different_instants_give_different_canonical_times(a: datetime, b: datetime) -> None:
    """Normalising never merges two instants."""
    assert (canonical_time(a.isoformat()) == canonical_time(b.isoformat())) == (a == b)


def test_canonical_time_keeps_what_does_not_parse() -> None:
    """A time that does not parse hashes as its text: the record is rejected anyway."""
    assert canonical_time("yesterday") == "yesterday"
    assert canonical_time("2026-01-01T00:00:00") == "2026-01-01T00:00:00"  # naive: invalid


def metric(counter: Any, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())


async def test_duplicates_are_dropped_answered_and_counted(
    definitions: Definitions,
    publisher: MemoryPublisher,
    topics: Topics,
    now: datetime,
    make_signal: Callable[..., dict[str, Any]],
) -> None:
    """A batch repeating a record, then a retry with the same instant written with an
    offset: each record is published once, the rest answered as duplicates, and
    received = accepted + dead-lettered + duplicate."""
    handler = IngestHandler(
        definitions, publisher, topics, clock=lambda: now, dedup=MemoryDedupWindow()
    )
    at = now - timedelta(seconds=5)
    one = make_signal(event_time=at.isoformat().replace("+00:00", "Z"))
    other = make_signal(entity_id="device-2")
    bad = make_signal(fields={"temperature": "hot"})
    before = {o: metric(OUTCOMES, "http", o) for o in ("accepted", "dead_lettered", "duplicate")}
    received = metric(RECEIVED, "http")

    first = await handler.on_signals(
        [RecordItem(i, b"{}", r) for i, r in enumerate([one, other, one, bad])]
    )
    assert [a.index for a in first.accepted] == [0, 1]
    assert [d.index for d in first.duplicates] == [2]
    assert [r.index for r in first.rejected] == [3]
    retry = dict(one, event_time=at.astimezone(timezone(timedelta(hours=1))).isoformat())
    second = await handler.on_signals([RecordItem(0, b"{}", retry)])
    assert second.accepted == [] and [d.event_id for d in second.duplicates] == [
        first.accepted[0].event_id
    ]
    assert len(publisher.sent[topics.valid]) == 2

    delta = {o: metric(OUTCOMES, "http", o) - before[o] for o in before}
    assert delta == {"accepted": 2, "dead_lettered": 1, "duplicate": 2}
    assert metric(RECEIVED, "http") - received == sum(delta.values()) == 5


async def test_a_dead_letter_carries_every_validation_error(
    handler: IngestHandler, publisher: MemoryPublisher, topics: Topics, now: datetime
) -> None:
    """A record with two envelope errors is dead-lettered with both, its stage, source,
    reason, original bytes and the time it was rejected."""
    record = {
        "source": "sensors",
        "event_time": "2026-11-22T09:59:00Z",
        "fields": {"temperature": 1.0, "status": "ok"},
        "event_id": "x" * 200,
    }  # no entity_id, and an event id over its 128 characters
    raw = json.dumps(record).encode()
    result = await handler.on_signals([RecordItem(0, raw, record)])
    assert [r.reason for r in result.rejected] == ["invalid_envelope"]
    ((key, value),) = publisher.sent[topics.dlq]
    letter = DeadLetter.from_bytes(value)
    assert (key, letter.stage, letter.source, letter.original) == (
        "sensors",
        "ingest",
        "sensors",
        raw,
    )
    assert sorted(e.split(":")[0] for e in letter.errors) == ["entity_id", "event_id"]
    assert letter.event_time.tzinfo is not None
