"""Validation of single records and splitting of request bodies (pure core)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from libs.common.definitions import Definitions
from libs.common.errors import RecordInvalid
from services.ingest.core import split_body, validate_outcome, validate_signal
from services.ingest.core.validation import check_size, record_hints
from services.ingest.errors import BatchTooLarge, InvalidBody

Record = dict[str, Any]


def fields(**kv: Any) -> Callable[[Record], Record]:
    """Mutation: set field values (`...` removes the field)."""

    def mutate(r: Record) -> Record:
        new = dict(r["fields"])
        for k, v in kv.items():
            if v is ...:
                new.pop(k, None)
            else:
                new[k] = v
        return {**r, "fields": new}

    return mutate


def envelope(**kv: Any) -> Callable[[Record], Any]:
    """Mutation: set (or remove with `...`) envelope keys."""

    def mutate(r: Record) -> Record:
        new = {**r, **{k: v for k, v in kv.items() if v is not ...}}
        for k in [k for k, v in kv.items() if v is ...]:
            new.pop(k)
        return new

    return mutate


SIGNAL_REJECTIONS: list[tuple[str, Callable[[Record], Any], str, str]] = [
    ("bytes_not_json", lambda r: b"{not json", "invalid_json", r"not JSON: Expecting"),
    ("bytes_nan", lambda r: b'{"x": NaN}', "invalid_json", r"NaN is not valid JSON"),
    ("bytes_not_utf8", lambda r: b'{"x": "\xff"}', "invalid_json", r"not UTF-8"),
    ("array_record", lambda r: [r], "invalid_envelope", r"record is an array; a signal is"),
    ("string_record", lambda r: "hello", "invalid_envelope", r"record is a string"),
    ("no_event_time", envelope(event_time=...), "invalid_envelope", r"event_time is missing"),
    (
        "naive_event_time",
        envelope(event_time="2026-11-22T09:59:00"),
        "invalid_envelope",
        r"event_time: .*timezone",
    ),
    (
        "garbage_event_time",
        envelope(event_time="yesterday-ish"),
        "invalid_envelope",
        r"event_time: .*got 'yesterday-ish'",
    ),
    (
        "fields_not_object",
        envelope(fields=[1, 2]),
        "invalid_envelope",
        r"'fields' is an array; send an object",
    ),
    ("empty_entity", envelope(entity_id=""), "invalid_envelope", r"entity_id: String should"),
    (
        "extra_envelope_key",
        envelope(feilds={}),
        "invalid_envelope",
        r"feilds: Extra inputs are not permitted",
    ),
    (
        "string_schema_version",
        envelope(schema_version="1"),
        "invalid_envelope",
        r"schema_version is '1'; send the source's version as an integer",
    ),
    (
        "bool_schema_version",
        envelope(schema_version=True),
        "invalid_envelope",
        r"schema_version is True",
    ),
    (
        "unknown_source",
        envelope(source="no_such_source"),
        "unknown_source",
        r"source 'no_such_source' is not registered \(known: payments, sensors\)",
    ),
    (
        "newer_schema_version",
        envelope(schema_version=2),
        "schema_breaking",
        r"schema_version 2 is newer than source 'sensors'\'s registered version 1; declare "
        r"version 2 of its fields in the definitions file",
    ),
    (
        "older_schema_version",
        lambda r: {**r, "source": "payments", "schema_version": 1, "fields": {"amount": 3.0}},
        "schema_version_mismatch",
        r"schema_version is 1 but source 'payments' is at version 2; send schema_version 2",
    ),
    (
        "default_version_vs_v2_source",
        lambda r: {
            **envelope(schema_version=...)(r),
            "source": "payments",
            "fields": {"amount": 3.0},
        },
        "schema_version_mismatch",
        r"schema_version is 1 but source 'payments' is at version 2",
    ),
    (
        "required_absent",
        fields(status=...),
        "missing_field",
        r"required field 'status' of source 'sensors' is missing; send a string",
    ),
    (
        "required_null",
        fields(temperature=None),
        "missing_field",
        r"required field 'temperature' of source 'sensors' is null; send a number",
    ),
    (
        "integral_float_for_int_out_of_range",
        fields(count=101.0),
        "out_of_range",
        r"field 'count' is 101, above its maximum 100",
    ),
    (
        "str_for_float",
        fields(temperature="hot"),
        "wrong_type",
        r"field 'temperature' is a string \('hot'\); send a number",
    ),
    (
        "bool_for_float",
        fields(temperature=True),
        "wrong_type",
        r"field 'temperature' is a boolean \(True\); send a number",
    ),
    (
        "float_for_int",
        fields(count=1.5),
        "wrong_type",
        r"field 'count' is a number \(1.5\); send an integer",
    ),
    ("bool_for_int", fields(count=False), "wrong_type", r"field 'count' is a boolean"),
    (
        "int_for_bool",
        fields(active=1),
        "wrong_type",
        r"field 'active' is an integer \(1\); send true or false",
    ),
    ("int_for_str", fields(status=3), "wrong_type", r"field 'status' is an integer"),
    (
        "array_for_float",
        fields(temperature=[1, 2, 3]),
        "wrong_type",
        r"field 'temperature' is an array \(\[1, 2, 3\]\)",
    ),
    ("object_for_str", fields(note={"a": 1}), "wrong_type", r"field 'note' is an object"),
    (
        "above_max",
        fields(temperature=150.5),
        "out_of_range",
        r"field 'temperature' is 150.5, above its maximum 150; send a value in \[-50, 150\]",
    ),
    (
        "below_min",
        fields(count=-1),
        "out_of_range",
        r"field 'count' is -1, below its minimum 0; send a value in \[0, 100\]",
    ),
    (
        "infinite",
        fields(temperature=float("inf")),
        "out_of_range",
        r"field 'temperature' is inf; send a finite number",
    ),
    (
        "huge_int",
        lambda r: {**r, "source": "payments", "schema_version": 2, "fields": {"amount": 10**30}},
        "out_of_range",
        r"field 'amount' is 10{30}; send an integer within 64 bits",
    ),
    (
        "not_allowed",
        fields(status="broken"),
        "not_allowed",
        r"field 'status' is 'broken'; send one of 'ok', 'warn', 'error'",
    ),
    (
        "too_late",
        envelope(event_time="2026-11-22T08:59:59Z"),
        "too_late",
        r"event_time 2026-11-22T08:59:59Z is 3601s old; source 'sensors' accepts events up to "
        r"3600s late",
    ),
    (
        "from_the_future",
        envelope(event_time="2026-11-22T10:05:01Z"),
        "from_the_future",
        r"is 301s ahead of now; source 'sensors' accepts up to 300s of clock skew",
    ),
    (
        "future_in_other_timezone",
        envelope(event_time="2026-11-22T12:00:00+01:00"),
        "from_the_future",
        r"2026-11-22T11:00:00Z is 3600s ahead",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "reason", "match"),
    [pytest.param(m, reason, match, id=name) for name, m, reason, match in SIGNAL_REJECTIONS],
)
def test_signal_rejections(
    mutate: Callable[[Record], Any],
    reason: str,
    match: str,
    make_signal: Callable[..., Record],
    definitions: Definitions,
    now: datetime,
) -> None:
    """Each invalid signal is rejected with its reason code and a detail naming value and fix."""
    with pytest.raises(RecordInvalid, match=match) as info:
        validate_signal(mutate(make_signal()), definitions, now)
    assert info.value.reason == reason


SIGNAL_ACCEPTANCES: list[tuple[str, Callable[[Record], Any]]] = [
    ("minimal", lambda r: r),
    ("int_for_float", fields(temperature=20)),
    ("optional_null", fields(count=None, note=None)),
    ("optional_values", fields(count=0, active=False, note="")),
    ("bounds_inclusive", fields(temperature=150, count=100)),
    ("lateness_inclusive", envelope(event_time="2026-11-22T09:00:00Z")),
    ("skew_inclusive", envelope(event_time="2026-11-22T10:05:00Z")),
    ("epoch_event_time", envelope(event_time=1795339200)),  # 2026-11-22T09:20:00Z
    ("as_bytes", lambda r: json.dumps(r).encode()),
    (
        "v2_source",
        lambda r: {**r, "source": "payments", "schema_version": 2, "fields": {"amount": 12}},
    ),
]


@pytest.mark.parametrize("mutate", [pytest.param(m, id=name) for name, m in SIGNAL_ACCEPTANCES])
def test_signal_acceptances(
    mutate: Callable[[Record], Any],
    make_signal: Callable[..., Record],
    definitions: Definitions,
    now: datetime,
) -> None:
    """Valid signals pass with their values; a number takes its field's declared type."""
    record = mutate(make_signal())
    signal = validate_signal(record, definitions, now)
    source = json.loads(record) if isinstance(record, bytes) else record
    spec = definitions.source(signal.source).fields
    declared = {"float": float, "int": int, "bool": bool, "str": str}
    assert signal.fields == source["fields"]
    assert all(v is None or type(v) is declared[spec[k].type] for k, v in signal.fields.items())


def test_event_id_is_derived_from_content(
    make_signal: Callable[..., Record], definitions: Definitions, now: datetime
) -> None:
    """A resent signal gets the same derived event id; a given event id is kept."""
    first = validate_signal(make_signal(), definitions, now)
    again = validate_signal(make_signal(), definitions, now)
    other = validate_signal(make_signal(entity_id="device-2"), definitions, now)
    given = validate_signal(make_signal(event_id="abc"), definitions, now)
    assert first.event_id == again.event_id != other.event_id
    assert given.event_id == "abc"


OUTCOME_REJECTIONS: list[tuple[str, Callable[[Record], Any], str, str]] = [
    ("not_json", lambda r: b"[", "invalid_json", r"not JSON"),
    ("not_object", lambda r: 1, "invalid_envelope", r"record is an integer; an outcome is"),
    ("no_label", envelope(label=...), "invalid_envelope", r"label: Field required"),
    ("text_label", envelope(label="yes"), "invalid_envelope", r"label: Input should be"),
    ("no_event_time", envelope(event_time=...), "invalid_envelope", r"event_time is missing"),
    (
        "unknown_model",
        envelope(model="churn"),
        "unknown_model",
        r"model 'churn' is not defined \(known: default, fraud\)",
    ),
    ("infinite_label", envelope(label=float("inf")), "out_of_range", r"label is inf"),
    (
        "fractional_label_of_binary_model",
        envelope(label=0.7),
        "out_of_range",
        r"label is 0.7; model 'default' is a binary classifier .* send 0 or 1",
    ),
    ("label_two_of_binary_model", envelope(label=2), "out_of_range", r"send 0 or 1"),
    (
        "from_the_future",
        envelope(event_time="2026-11-22T10:05:01Z"),
        "from_the_future",
        r"model 'default' accepts up to 300s of clock skew",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "reason", "match"),
    [pytest.param(m, reason, match, id=name) for name, m, reason, match in OUTCOME_REJECTIONS],
)
def test_outcome_rejections(
    mutate: Callable[[Record], Any],
    reason: str,
    match: str,
    make_outcome: Callable[..., Record],
    definitions: Definitions,
    now: datetime,
) -> None:
    """Each invalid outcome is rejected with its reason code and a helpful detail."""
    with pytest.raises(RecordInvalid, match=match) as info:
        validate_outcome(mutate(make_outcome()), definitions, now)
    assert info.value.reason == reason


def test_outcomes_may_be_arbitrarily_late(
    make_outcome: Callable[..., Record], definitions: Definitions, now: datetime
) -> None:
    """Labels arrive late by nature: a year-old outcome is accepted, its event id derived."""
    old = make_outcome(event_time="2025-11-22T10:00:00Z", prediction_id="p-1")
    outcome = validate_outcome(old, definitions, now)
    assert outcome.prediction_id == "p-1"
    assert outcome.event_id == validate_outcome(dict(old), definitions, now).event_id


def test_check_size_rejects_large_records() -> None:
    """A record over the byte limit is too_large; one at the limit passes."""
    check_size(b"x" * 10, 10)
    with pytest.raises(RecordInvalid, match=r"record is 11 bytes; the limit is 10"):
        check_size(b"x" * 11, 10)


@pytest.mark.parametrize(
    ("record", "hints"),
    [
        ({"source": "sensors", "entity_id": "d-1"}, ("sensors", "d-1")),
        (b'{"source": "x", "entity_id": 5}', ("x", None)),
        (b"garbage", (None, None)),
        ([{"source": "x"}], (None, None)),
        ({"source": ""}, (None, None)),
    ],
)
def test_record_hints(record: Any, hints: tuple[str | None, str | None]) -> None:
    """Dead-letter keys come from plain-string source and entity_id, never raising."""
    assert record_hints(record) == hints


# -- splitting request bodies ------------------------------------------------------------


def test_split_single_object_keeps_whole_body() -> None:
    """A body that is one object is one record whose bytes are the whole body."""
    body = b' {"source": "sensors"} \n'
    (item,) = split_body(body, wrapper="signals", max_records=10)
    assert (item.index, item.raw, item.record) == (0, body, {"source": "sensors"})


def test_split_array_keeps_each_records_exact_bytes() -> None:
    """Each array element keeps its exact bytes: spacing, escapes and UTF-8 untouched."""
    elements = [b'{"a": "\\u00e9 \xc3\xa9" ,"b":[1, {}]}', b"5", b'"x,]"', b"null", b"[[],{}]"]
    body = b"[ " + b" ,\n\t".join(elements) + b" ]"
    items = split_body(body, wrapper="signals", max_records=10)
    assert [i.raw for i in items] == elements
    assert [i.record for i in items] == [json.loads(e) for e in elements]
    assert [i.index for i in items] == list(range(5))


def test_split_wrapper_object() -> None:
    """{"signals": [...]} is a batch; the last duplicate key wins, as in json.loads."""
    body = b'{"signals": [1], "signals" : [ {"k": 1} , 2 ]}'
    items = split_body(body, wrapper="signals", max_records=10)
    assert [i.raw for i in items] == [b'{"k": 1}', b"2"]


@pytest.mark.parametrize(
    "body",
    [b'{"signals": [], "more": 1}', b'{"signals": {"a": 1}}', b'{"outcomes": [1, 2]}'],
)
def test_split_other_objects_are_single_records(body: bytes) -> None:
    """An object that is not exactly the wrapper is one record (validated as such)."""
    (item,) = split_body(body, wrapper="signals", max_records=10)
    assert item.raw == body


@pytest.mark.parametrize("body", [b"[]", b"  [ ]  ", b'{"signals": []}'])
def test_split_empty_batches(body: bytes) -> None:
    """An empty batch has no records."""
    assert split_body(body, wrapper="signals", max_records=10) == []


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", r"not JSON: Expecting value"),
        (b"[1, 2", r"not JSON"),
        (b"{} {}", r"not JSON: Extra data"),
        (b"\xff\xfe[]", r"not UTF-8"),
        (b"[Infinity]", r"Infinity is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, r"not acceptable JSON"),
        (b"1" * 5000, r"not acceptable JSON"),
    ],
    ids=["empty", "truncated", "extra_data", "utf16", "infinity", "deep", "huge_int"],
)
def test_split_rejects_invalid_bodies(body: bytes, match: str) -> None:
    """Bodies that are not strict UTF-8 JSON raise InvalidBody with the reason."""
    with pytest.raises(InvalidBody, match=match):
        split_body(body, wrapper="signals", max_records=10)


@pytest.mark.parametrize("body", [b"[1, 2, 3, 4]", b'{"signals": [1, 2, 3, 4]}'])
def test_split_refuses_batches_over_the_limit(body: bytes) -> None:
    """More records than max_records raises BatchTooLarge naming the limit."""
    with pytest.raises(BatchTooLarge, match=r"4 records in one request; the limit is 3"):
        split_body(body, wrapper="signals", max_records=3)
    assert len(split_body(body, wrapper="signals", max_records=4)) == 4
