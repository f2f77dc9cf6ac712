"""Hostile request bodies for fuzzing ingest (hypothesis strategies), shared by the
in-process HTTP fuzz and the signals.raw fuzz on the real broker.

Bodies are rendered as text so they can hold what json.dumps never writes: NaN and
Infinity tokens, numbers too big for a float or for int(), lone surrogate escapes,
nesting past the parser's recursion limit, invalid UTF-8, times at the edges of the
calendar.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

MAX_BATCH = 20  # records per body drawn up to MAX_BATCH + 2, so some bodies are too many
MAX_RECORD = 4096  # strings drawn up to twice this, around a record size limit


@dataclass(frozen=True)
class Token:
    """JSON-ish text put into the body as is (what json.dumps would never write)."""

    text: str


def render(value: Any) -> str:
    """`value` as JSON text, Tokens verbatim."""
    if isinstance(value, Token):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)


offsets = st.builds(
    lambda m: timezone(timedelta(minutes=m)), st.integers(-(24 * 60 - 1), 24 * 60 - 1)
)
far_times = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59), timezones=offsets
).map(lambda t: t.isoformat()) | st.sampled_from(
    [
        "0001-01-01T00:00:00+01:00",  # no UTC form: before year 1
        "9999-12-31T23:59:59-01:00",  # no UTC form: after year 9999
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "1970-01-01T00:00:00Z",
        "2026-11-22T09:59:59",  # no timezone
        "2026-13-40T99:99:99Z",
        "",
    ]
)
TOKENS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",  # parses as inf
    "-1e999",
    "1e-999",
    r'"\ud800"',  # a lone surrogate
    r'"x\udfffy"',
    r'"\ud83d\ude00"',  # a valid pair (an emoji)
    r'"\u0000"',
    "-0",
]
# One branch per kind, so each is drawn often (one_of weighs its branches equally).
hostile = st.one_of(
    *(st.just(Token(t)) for t in TOKENS),
    st.integers(18, 5000).map(lambda n: Token("9" * n)),  # past int64, past int() digits
    # From 2: "[]" alone would be an empty batch (no record), not one deep record.
    st.integers(2, 3000).map(lambda d: Token("[" * d + "]" * d)),  # past the recursion limit
    st.integers(1, 1500).map(lambda d: Token('{"a":' * d + "1" + "}" * d)),
    st.integers(0, 2 * MAX_RECORD).map(lambda n: "x" * n),  # around the record size limit
    st.floats() | st.integers(-(2**70), 2**70),  # epoch-like numbers where a time goes
    far_times,
    st.none() | st.booleans() | st.text(max_size=10),
)
fields = st.dictionaries(
    st.sampled_from(["temperature", "count", "active", "status", "note", "x", "\u00e9"]),
    st.sampled_from([21.5, 3, True, "ok"]) | hostile,
    max_size=5,
)
signals = st.fixed_dictionaries(
    {},
    optional={
        "source": st.just("sensors") | hostile,
        "entity_id": st.just("device-1") | hostile,
        "event_time": st.just("2026-11-22T09:59:00Z") | far_times | hostile,
        "fields": fields | hostile,
        "schema_version": st.just(1) | hostile,
        "event_id": st.text(min_size=1, max_size=8) | hostile,
        "produced_at": far_times,
        "ingested_at": hostile,
    },
)
outcomes = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just("default") | hostile,
        "entity_id": st.just("device-1") | hostile,
        "event_time": st.just("2026-11-20T00:00:00Z") | far_times | hostile,
        "label": st.sampled_from([0, 1]) | hostile,
        "prediction_id": st.text(max_size=8) | hostile,
        "produced_at": far_times,
    },
)


def mutants(valid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`valid` with one to three values (envelope or field) set to hostile ones:
    near-valid records reach the publisher, where unencodable values would crash."""

    @st.composite
    def mutate(draw: Callable[..., Any]) -> dict[str, Any]:
        record = json.loads(json.dumps(valid))
        for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
            inner = isinstance(record.get("fields"), dict) and draw(st.booleans())
            target = record["fields"] if inner else record
            keys = [*sorted(target), "note" if inner else "produced_at"]
            target[draw(st.sampled_from(keys))] = draw(hostile)
        return record

    return mutate()


VALID_SIGNAL = {
    "source": "sensors",
    "entity_id": "device-1",
    "event_time": "2026-11-22T09:59:00Z",
    "schema_version": 1,
    "fields": {"temperature": 21.5, "status": "ok", "count": 3, "active": True},
}
VALID_OUTCOME = {
    "model": "default",
    "entity_id": "device-1",
    "event_time": "2026-11-20T00:00:00Z",
    "label": 1,
    "prediction_id": "p-1",
}
invalid_utf8 = st.sampled_from(
    [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]
)


@dataclass(frozen=True)
class Body:
    """A rendered body and how many records it holds (None: not a record container)."""

    data: bytes
    records: int


def _records_in(value: Any, wrapper: str) -> int:
    """How many records a body of `value` holds: an array's (or the wrapper's) elements,
    else the value is one record (hostile values can be either)."""
    if isinstance(value, dict) and list(value) == [wrapper]:
        value = value[wrapper]
    return len(value) if isinstance(value, list) else 1


def bodies(records: st.SearchStrategy[Any], wrapper: str) -> st.SearchStrategy[Body]:
    def shaped(draw: Callable[..., Any]) -> Body:
        kind = draw(st.sampled_from(["one", "one", "array", "wrapper", "other"]))
        if kind in ("one", "other"):
            value = draw(records if kind == "one" else hostile)
            return Body(render(value).encode(), _records_in(value, wrapper))
        items = draw(st.lists(records | hostile, max_size=MAX_BATCH + 2))
        text = render(items) if kind == "array" else render({wrapper: items})
        return Body(text.encode(), len(items))

    shaped_bodies = st.composite(lambda draw: shaped(draw))()

    @st.composite
    def corrupted(draw: Callable[..., Any]) -> Body:
        body = draw(shaped_bodies)
        at = draw(st.integers(0, len(body.data)))
        return Body(body.data[:at] + draw(invalid_utf8) + body.data[at:], 1)

    return shaped_bodies | corrupted()
