"""Handlers against a fake broker: what goes to the valid, outcomes and dead-letter topics."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from libs.common.clients.kafka import Delivery, MemoryPublisher
from libs.common.schemas import DeadLetter, Outcome, Signal
from libs.common.settings import Topics
from services.ingest.core import split_body
from services.ingest.errors import InvalidBody
from services.ingest.handlers import IngestHandler

Record = dict[str, Any]


def dead_letters(publisher: MemoryPublisher, topics: Topics) -> list[tuple[str | None, Any]]:
    return [(k, DeadLetter.from_bytes(v)) for k, v in publisher.sent[topics.dlq]]


def raw_record(
    value: bytes | None, *, key: bytes | None = None, offset: int = 0, topic: str = "signals.raw"
) -> Delivery[bytes]:
    return Delivery(value or b"", topic, 0, offset, key.decode() if key else None, value or b"")


async def test_mixed_batch_splits_into_valid_and_dead_letters(
    handler: IngestHandler,
    publisher: MemoryPublisher,
    topics: Topics,
    make_signal: Callable[..., Record],
) -> None:
    """Valid signals go to topics.valid keyed by entity; rejects to the DLQ keyed by source."""
    good_1 = make_signal(entity_id="device-1")
    good_2 = make_signal(entity_id="device-2", fields={"temperature": 3, "status": "warn"})
    unknown = make_signal(source="no_such_source", entity_id="device-3")
    body = json.dumps([good_1, unknown, 7, good_2]).encode()

    result = await handler.on_signals(split_body(body, wrapper="signals", max_records=10))

    # The answer: indexes in request order, with event ids and reasons.
    assert [a.index for a in result.accepted] == [0, 3]
    assert [(r.index, r.reason) for r in result.rejected] == [
        (1, "unknown_source"),
        (2, "invalid_envelope"),
    ]
    # The valid topic: keyed by entity id, the same event ids as answered.
    valid = [(k, Signal.from_bytes(v)) for k, v in publisher.sent[topics.valid]]
    assert [(k, s.entity_id, s.fields) for k, s in valid] == [
        ("device-1", "device-1", good_1["fields"]),
        ("device-2", "device-2", good_2["fields"]),
    ]
    assert [s.event_id for _, s in valid] == [a.event_id for a in result.accepted]
    # The dead letters: keyed by source ("http" when the record names none).
    letters = dead_letters(publisher, topics)
    assert [(k, d.source, d.reason, d.stage) for k, d in letters] == [
        ("no_such_source", "no_such_source", "unknown_source", "ingest"),
        ("http", "http", "invalid_envelope", "ingest"),
    ]
    assert letters[0][1].original_key == "device-3"
    assert letters[0][1].original_topic is None


async def test_dead_letter_keeps_the_records_exact_bytes(
    handler: IngestHandler,
    publisher: MemoryPublisher,
    topics: Topics,
    make_signal: Callable[..., Record],
) -> None:
    """A dead letter's original bytes are the rejected record's bytes exactly as posted."""
    bad = (
        b'{ "source":"sensors", "entity_id": "d-\xc3\xa9",  "event_time": "2026-11-22T09:00:00Z",'
        b' "fields": {"temperature": "hot", "status": "ok"} }'
    )
    body = b'{"signals": [' + json.dumps(make_signal()).encode() + b",\n  " + bad + b"]}"

    await handler.on_signals(split_body(body, wrapper="signals", max_records=10))

    ((key, letter),) = dead_letters(publisher, topics)
    assert (key, letter.reason) == ("sensors", "wrong_type")
    assert letter.original == bad
    assert json.loads(letter.original)["entity_id"] == "d-é"
    assert "field 'temperature' is a string ('hot'); send a number" in letter.detail


async def test_invalid_body_is_dead_lettered_whole(
    handler: IngestHandler, publisher: MemoryPublisher, topics: Topics
) -> None:
    """A body that is not JSON becomes one dead letter holding the whole body."""
    body = b'[{"source": "sensors", '
    result = await handler.on_invalid_body(body, InvalidBody("not JSON: truncated"))
    assert [(r.index, r.reason) for r in result.rejected] == [(0, "invalid_json")]
    assert result.accepted == []
    ((key, letter),) = dead_letters(publisher, topics)
    assert (key, letter.source, letter.original) == ("http", "http", body)
    assert publisher.sent[topics.valid] == []


async def test_oversized_dead_letter_is_truncated_and_says_so(
    handler: IngestHandler, publisher: MemoryPublisher, topics: Topics
) -> None:
    """Garbage larger than the dead-letter limit keeps its first bytes and a note why."""
    body = b"x" * 5000  # the fixture's limit is 2048
    await handler.on_invalid_body(body, InvalidBody("not JSON"))
    ((_, letter),) = dead_letters(publisher, topics)
    assert letter.original == body[:2048]
    assert "original truncated to its first 2048 of 5000 bytes" in letter.detail


async def test_too_large_record_is_rejected_not_published(
    handler: IngestHandler,
    publisher: MemoryPublisher,
    topics: Topics,
    make_signal: Callable[..., Record],
) -> None:
    """A record over max_record_bytes is dead-lettered as too_large, whole."""
    big = make_signal(fields={"temperature": 1.0, "status": "ok", "note": "n" * 5000})
    raw = json.dumps(big).encode()
    result = await handler.on_signals(split_body(raw, wrapper="signals", max_records=1))
    assert [r.reason for r in result.rejected] == ["too_large"]
    ((_, letter),) = dead_letters(publisher, topics)
    assert letter.original.startswith(raw[:2048])
    assert publisher.sent[topics.valid] == []


async def test_outcomes_go_to_the_outcomes_topic(
    handler: IngestHandler,
    publisher: MemoryPublisher,
    topics: Topics,
    make_outcome: Callable[..., Record],
) -> None:
    """Valid outcomes go to topics.outcomes keyed by entity; rejects to the DLQ as 'outcomes'."""
    body = json.dumps(
        [
            make_outcome(entity_id="device-7", label=0),
            make_outcome(model="churn", entity_id="device-8"),
        ]
    ).encode()

    result = await handler.on_outcomes(split_body(body, wrapper="outcomes", max_records=10))

    assert [(r.index, r.reason) for r in result.rejected] == [(1, "unknown_model")]
    ((key, value),) = publisher.sent[topics.outcomes]
    outcome = Outcome.from_bytes(value)
    assert (key, outcome.entity_id, outcome.label) == ("device-7", "device-7", 0.0)
    assert outcome.event_id == result.accepted[0].event_id
    ((dkey, letter),) = dead_letters(publisher, topics)
    assert (dkey, letter.source, letter.original_key) == ("outcomes", "outcomes", "device-8")
    assert json.loads(letter.original)["model"] == "churn"
    assert publisher.sent[topics.valid] == []


async def test_raw_records_get_the_same_validation(
    handler: IngestHandler,
    publisher: MemoryPublisher,
    topics: Topics,
    make_signal: Callable[..., Record],
) -> None:
    """signals.raw records: valid to topics.valid; rejects keep the raw topic and key."""
    good = json.dumps(make_signal(entity_id="device-5")).encode()
    late = json.dumps(make_signal(event_time="2026-11-22T07:00:00Z")).encode()
    records = [
        raw_record(good, key=b"device-5", offset=0),
        raw_record(b"\x00garbage", key=b"k-1", offset=1),
        raw_record(late, key=None, offset=2),
        raw_record(None, key=b"tombstone", offset=3),
    ]

    result = await handler.on_raw_records(records)

    assert [a.index for a in result.accepted] == [0]
    assert [(r.index, r.reason) for r in result.rejected] == [
        (1, "invalid_json"),
        (2, "too_late"),
        (3, "invalid_json"),
    ]
    ((key, value),) = publisher.sent[topics.valid]
    assert (key, Signal.from_bytes(value).entity_id) == ("device-5", "device-5")
    letters = dead_letters(publisher, topics)
    assert [(k, d.source, d.original_topic, d.original_key, d.original) for k, d in letters] == [
        ("signals.raw", "signals.raw", "signals.raw", "k-1", b"\x00garbage"),
        ("sensors", "sensors", "signals.raw", None, late),
        ("signals.raw", "signals.raw", "signals.raw", "tombstone", b""),
    ]


async def test_uses_pipelined_publish_many_when_available(
    handler: IngestHandler, topics: Topics, make_signal: Callable[..., Record]
) -> None:
    """With publish_many available, one call carries the batch: valid in order, then DLQ."""

    class BatchingPublisher(MemoryPublisher):
        calls: list[list[tuple[str, Any, str | None]]]

        async def publish_many(self, items: list[tuple[str, Any, str | None]]) -> None:
            self.calls.append(list(items))

    batching = BatchingPublisher()
    batching.calls = []
    handler.publisher = batching
    body = json.dumps([make_signal(entity_id="a"), 1, make_signal(entity_id="b")]).encode()

    await handler.on_signals(split_body(body, wrapper="signals", max_records=10))

    (call,) = batching.calls
    assert [(t, k) for t, _, k in call] == [
        (topics.valid, "a"),
        (topics.valid, "b"),
        (topics.dlq, "http"),
    ]
