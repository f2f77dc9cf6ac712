"""The features service's fast signal decoder against `Signal` itself.

`decode_signal` (services/features/decoding.py) must accept exactly what `Signal`
accepts, with the same values, and refuse the rest with pydantic's ValidationError
(the consume loop dead-letters those as `invalid_message`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from libs.common.schemas import Signal
from services.features.core.updates import ValidSignal
from services.features.decoding import _fast, decode_signal

BASE: dict[str, Any] = {
    "message_version": 1,
    "event_id": "e-1",
    "event_time": "2026-11-22T10:00:00.123456Z",
    "produced_at": "2026-11-22T10:00:02Z",
    "source": "sensors",
    "entity_id": "device-42",
    "fields": {"temperature": 71.3, "count": 3, "ok": True, "status": "ok", "gone": None},
    "schema_version": 1,
    "ingested_at": "2026-11-22T10:00:01.5+00:00",
}


def _with(**changes: Any) -> bytes:
    doc = {**BASE, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not _DROP}).encode()


_DROP = object()

# Records `Signal` accepts; the fast path takes some, pydantic the others.
VALID = [
    _with(),
    _with(ingested_at=None),
    _with(ingested_at=_DROP, message_version=_DROP, schema_version=_DROP),
    _with(event_time="2026-11-22T12:00:00+02:00"),
    _with(event_time="2026-11-22T10:00:00.5-03:30"),
    _with(fields={}),
    _with(fields={"big": 2**70}),  # beyond 64 bits: orjson refuses, pydantic keeps it
    _with(event_id=_DROP),  # derived from the content by Signal
    _with(produced_at=_DROP),  # defaults to now in Signal
    _with(event_time=1795340800),  # epoch seconds: pydantic's call
    _with(event_time="2026-11-22 10:00:00Z"),  # a space: pydantic's call
    _with(schema_version="2"),  # lax int: pydantic's call
    _with(fields={"x": 1e400}),  # infinity
]

INVALID = [
    b"not json",
    b"[1, 2]",
    _with(source=""),
    _with(source="s" * 65),
    _with(entity_id=""),
    _with(entity_id=7),
    _with(event_id="x" * 129),
    _with(event_time="2026-11-22T10:00:00"),  # no zone
    _with(event_time="2026-13-22T10:00:00Z"),
    _with(ingested_at="yesterday"),
    _with(schema_version=0),
    _with(message_version=0),
    _with(fields={"x": [1, 2]}),
    _with(fields={"x": {"y": 1}}),
    _with(fields=[1]),
    _with(surprise=1),  # extra keys are forbidden
    _with(source=_DROP),
]


@pytest.mark.parametrize("value", VALID)
def test_a_valid_record_decodes_to_what_signal_gives(value: bytes) -> None:
    """Every field and time equals `Signal`'s reading of the same bytes."""
    decoded = decode_signal(value)
    expected = ValidSignal.of(Signal.model_validate_json(value))
    if "produced_at" not in json.loads(value):
        # Signal stamps a missing produced_at with the decoding time.
        expected.arrival_ts = decoded.arrival_ts
    assert decoded == expected
    assert [type(v) for v in decoded.fields.values()] == [type(v) for v in expected.fields.values()]


@pytest.mark.parametrize("value", INVALID)
def test_an_invalid_record_is_refused_by_pydantic(value: bytes) -> None:
    """The fast path steps aside and `Signal`'s ValidationError reaches the loop."""
    assert _fast(value) is None
    with pytest.raises(ValidationError):
        decode_signal(value)


def test_records_as_ingest_writes_them_take_the_fast_path() -> None:
    """The common case never builds a pydantic model."""
    signal = Signal(
        source="sensors",
        entity_id="device-1",
        event_time=datetime(2026, 11, 22, 10, 0, 0, 250000, tzinfo=UTC),
        fields={"temperature": 20.5, "status": "ok", "pressure": None},
        ingested_at=datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC),
    )
    fast = _fast(signal.to_bytes())
    assert fast == ValidSignal.of(signal)
    assert _fast(_with()) is not None
