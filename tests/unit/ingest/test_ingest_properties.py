"""Properties: no body crashes ingest, and every record ends accepted or dead-lettered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.clients.kafka import MemoryPublisher
from libs.common.definitions import Definitions
from libs.common.schemas import DeadLetter, Signal
from libs.common.settings import Topics
from services.ingest.core import reasons, split_body
from services.ingest.core.batch import RecordItem, _parse_strict, _split_parsed, _utf8, parse_json
from services.ingest.core.verdicts import BatchResult, judge
from services.ingest.errors import BatchTooLarge, InvalidBody
from services.ingest.handlers import IngestHandler
from tests.unit.ingest.hostile_bodies import bodies

T = TypeVar("T")
REASONS = {v for k, v in vars(reasons).items() if k.isupper()}
TOPICS = Topics()
MAX_BATCH = 20
# The fixtures used (definitions, now) are immutable, so sharing them across examples is safe;
# each example builds its own publisher.
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
times = st.datetimes(
    min_value=datetime(2026, 11, 22, 8),
    max_value=datetime(2026, 11, 22, 11),
    timezones=st.just(UTC),
).map(lambda t: t.isoformat().replace("+00:00", "Z"))
field_values = (
    st.none()
    | st.booleans()
    | st.integers(-100, 200)
    | st.floats(-100, 200)
    | st.sampled_from(["ok", "warn", "error", "broken"])
    | json_values
)
signal_like = st.fixed_dictionaries(
    {},
    optional={
        "source": st.sampled_from(["sensors", "payments", "nope"]) | json_values,
        "entity_id": st.text(max_size=6) | json_values,
        "event_time": times | json_values,
        "fields": st.dictionaries(
            st.sampled_from(["temperature", "count", "active", "status", "note", "amount", "x"]),
            field_values,
            max_size=6,
        )
        | json_values,
        "schema_version": st.sampled_from([1, 2]) | json_values,
        "event_id": st.text(min_size=1, max_size=8),
    },
)
valid_sensors = st.builds(
    lambda entity, t, temperature, status, count: {
        "source": "sensors",
        "entity_id": entity,
        "event_time": t,
        "schema_version": 1,
        "fields": {"temperature": temperature, "status": status, "count": count},
    },
    st.text(min_size=1, max_size=20),
    st.datetimes(
        min_value=datetime(2026, 11, 22, 9, 0, 1),
        max_value=datetime(2026, 11, 22, 10, 4, 59),
        timezones=st.just(UTC),
    ).map(lambda t: t.isoformat()),
    st.floats(-50, 150) | st.integers(-50, 150),
    st.sampled_from(["ok", "warn", "error"]),
    st.none() | st.integers(0, 100),
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on a private loop: hypothesis drives sync tests, the session loop stays untouched."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def new_handler(definitions: Definitions, now: datetime) -> tuple[IngestHandler, MemoryPublisher]:
    publisher = MemoryPublisher()
    handler = IngestHandler(
        definitions, publisher, TOPICS, max_record_bytes=4096, clock=lambda: now
    )
    return handler, publisher


async def ingest(handler: IngestHandler, body: bytes) -> tuple[int | None, BatchResult | None]:
    """The HTTP path without HTTP: (records in the body, result); None when refused (413)."""
    try:
        items = split_body(body, wrapper="signals", max_records=MAX_BATCH)
    except InvalidBody as exc:
        return 1, await handler.on_invalid_body(body, exc)
    except BatchTooLarge:
        return None, None
    return len(items), await handler.on_signals(items)


def assert_every_record_accounted(
    body: bytes, definitions: Definitions, now: datetime
) -> tuple[BatchResult | None, MemoryPublisher]:
    """Ingest `body`; assert each record got exactly one verdict and one published message."""
    handler, publisher = new_handler(definitions, now)
    count, result = run(ingest(handler, body))
    if result is None:  # refused whole: nothing taken in, nothing published
        assert publisher.sent == {}
        return None, publisher
    indexes = sorted([a.index for a in result.accepted] + [r.index for r in result.rejected])
    assert indexes == list(range(count or 0))
    assert {r.reason for r in result.rejected} <= REASONS
    assert all(r.detail for r in result.rejected)
    assert len(publisher.sent[TOPICS.valid]) == len(result.accepted)
    assert len(publisher.sent[TOPICS.dlq]) == len(result.rejected)
    return result, publisher


@PROPERTY
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(body: bytes, definitions: Definitions, now: datetime) -> None:
    """Any bytes: each record is accepted or rejected with a known reason, none lost."""
    assert_every_record_accounted(body, definitions, now)


@PROPERTY
@given(
    value=json_values
    | st.lists(signal_like, max_size=8)
    | st.fixed_dictionaries({"signals": st.lists(json_values | signal_like, max_size=8)})
)
def test_arbitrary_json_never_crashes(value: Any, definitions: Definitions, now: datetime) -> None:
    """Any JSON body: accepted + rejected equals the number of records it holds."""
    body = json.dumps(value).encode()
    result, _ = assert_every_record_accounted(body, definitions, now)
    if isinstance(value, list) and len(value) <= MAX_BATCH:
        assert result is not None
        assert len(result.accepted) + len(result.rejected) == len(value)


@PROPERTY
@given(records=st.lists(signal_like, min_size=1, max_size=8))
def test_dead_letters_decode_back_to_their_records(
    records: list[dict[str, Any]], definitions: Definitions, now: datetime
) -> None:
    """Every dead letter's original bytes parse back to the very record that was posted."""
    body = json.dumps(records, indent=1).encode()
    result, publisher = assert_every_record_accounted(body, definitions, now)
    assert result is not None
    letters = [DeadLetter.from_bytes(v) for _, v in publisher.sent[TOPICS.dlq]]
    assert [json.loads(d.original) for d in letters] == [records[r.index] for r in result.rejected]


@PROPERTY
@given(records=st.lists(valid_sensors, min_size=1, max_size=8))
def test_valid_signals_are_all_accepted_unchanged(
    records: list[dict[str, Any]], definitions: Definitions, now: datetime
) -> None:
    """Signals within the schema and time bounds are accepted and published as sent."""
    handler, publisher = new_handler(definitions, now)
    _, result = run(ingest(handler, json.dumps(records).encode()))
    assert result is not None and result.rejected == []
    published = [Signal.from_bytes(v) for _, v in publisher.sent[TOPICS.valid]]
    assert [s.fields for s in published] == [r["fields"] for r in records]
    assert [k for k, _ in publisher.sent[TOPICS.valid]] == [r["entity_id"] for r in records]
    assert all(now - timedelta(hours=1) <= s.event_time for s in published)


def _split_or_error(split: Any, body: bytes) -> Any:
    try:
        return [(i.index, i.raw, i.record) for i in split(body)]
    except (InvalidBody, BatchTooLarge) as exc:
        return type(exc), str(exc)


@PROPERTY
@given(
    value=json_values | st.lists(signal_like, max_size=8) | st.lists(json_values, max_size=8),
    wrapped=st.booleans(),
    indent=st.none() | st.integers(0, 3),
    separators=st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
    ascii_only=st.booleans(),
    hostile=bodies(signal_like, "signals"),
)
def test_one_pass_split_equals_the_full_parse(
    value: Any,
    wrapped: bool,
    indent: int | None,
    separators: tuple[str, str],
    ascii_only: bool,
    hostile: Any,
) -> None:
    """split_body's compact path (orjson) and one-pass scan of arrays and wrappers give
    the records, bytes and errors of parsing the whole body first (the path they
    replaced, still the fallback)."""
    body_value = {"signals": value} if wrapped else value
    text = json.dumps(body_value, indent=indent, ensure_ascii=ascii_only)
    if indent is None:
        text = json.dumps(body_value, separators=separators, ensure_ascii=ascii_only)
    for body in (text.encode(), b" \n" + text.encode() + b"\t ", hostile.data):
        assert _split_or_error(
            lambda b: split_body(b, wrapper="signals", max_records=MAX_BATCH), body
        ) == _split_or_error(
            lambda b: _split_parsed(_utf8(b), b, wrapper="signals", max_records=MAX_BATCH),
            body,
        )


def test_a_record_too_deep_to_validate_is_refused_and_its_neighbours_judged() -> None:
    """A RecursionError while validating one record (nesting Python cannot print) is
    that record's rejection, never the batch's crash."""

    def validate(record: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    items = [RecordItem(0, b'"deep"', "deep"), RecordItem(1, b'"deep"', "deep")]
    judged = judge(items, validate, max_record_bytes=1024)
    assert [(i.index, e.reason) for i, e in judged.rejected] == [
        (0, reasons.INVALID_ENVELOPE),
        (1, reasons.INVALID_ENVELOPE),
    ]
    assert "nested too deeply" in judged.rejected[0][1].detail


def _parsed_or_error(parse: Any, data: bytes) -> Any:
    try:
        return repr(parse(data))  # repr: 1 and 1.0 differ, as they do in a record
    except InvalidBody as exc:
        return type(exc), str(exc)


@PROPERTY
@given(
    value=json_values
    | st.lists(signal_like, max_size=4)
    # Past 64 bits, where orjson would read a float (the strict parse must decide).
    | st.lists(st.integers(-(2**80), 2**80) | st.floats(allow_nan=False), max_size=4),
    ascii_only=st.booleans(),
    hostile=bodies(signal_like, "signals"),
    junk=st.binary(max_size=64),
)
def test_parse_json_is_the_strict_parse(
    value: Any, ascii_only: bool, hostile: Any, junk: bytes
) -> None:
    """parse_json (orjson first) gives the value or the error of the standard-library
    parse it falls back to, for JSON, hostile bodies and arbitrary bytes."""
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    for data in (text, hostile.data, junk, text + junk):
        assert _parsed_or_error(parse_json, data) == _parsed_or_error(_parse_strict, data)
