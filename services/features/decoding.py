"""signals.valid records -> `ValidSignal`, without a pydantic model per record.

Decoding was the largest single cost of the features service after the store writes
(docs/benchmarks.md, "Features service"): `Signal.model_validate_json` takes about
10 us a record. Records as ingest writes them take a fast path (orjson and a few
checks, about a third of that); anything the fast path does not recognise goes
through `Signal` itself, so the fast path only ever accepts what `Signal` accepts,
with the same values, and every refusal is pydantic's own (a test holds the two
paths to that).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson

from libs.common.schemas import Signal
from services.features.core.updates import ValidSignal

# RFC 3339 with a zone, at most microseconds: the form `Message` writes, which
# `datetime.fromisoformat` and pydantic read as the same instant.
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")
_KEYS = frozenset(Signal.model_fields)
_REQUIRED = frozenset({"event_id", "event_time", "produced_at", "source", "entity_id", "fields"})
_SCALARS = (str, int, bool)
# orjson reads an integer beyond 64 bits as a float, pydantic as an int: a float this
# large might have been one, so its record takes pydantic's path.
_INT64 = float(2**63)


def decode_signal(value: bytes) -> ValidSignal:
    """The signal in `value` (a signals.valid record).

    Raises:
        pydantic.ValidationError: not a valid `Signal` (the consume loop dead-letters
            the record as `invalid_message`).
    """
    fast = _fast(value)
    return fast if fast is not None else ValidSignal.of(Signal.model_validate_json(value))


def _fast(value: bytes) -> ValidSignal | None:
    """The signal when `value` is plainly valid, else None (pydantic decides).

    Field values are kept as `Signal` keeps them: str, int, bool, None or a finite
    float (orjson reads an integer beyond 64 bits as a float; pydantic keeps an int).
    """
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(d) is not dict or not _REQUIRED <= d.keys() or not d.keys() <= _KEYS:
        return None
    event_id, source, entity_id, fields = d["event_id"], d["source"], d["entity_id"], d["fields"]
    version = d.get("schema_version", 1)
    message_version = d.get("message_version", 1)
    if not (
        type(event_id) is str
        and 0 < len(event_id) <= 128
        and type(source) is str
        and 0 < len(source) <= 64
        and type(entity_id) is str
        and 0 < len(entity_id) <= 256
        and type(fields) is dict
        and type(version) is int
        and version >= 1
        and type(message_version) is int
        and message_version >= 1
    ):
        return None
    for v in fields.values():  # a loop, not all(...): this runs for every record
        t = type(v)
        if t is float:
            if not -_INT64 < v < _INT64:  # also false for NaN and infinities
                return None
        elif v is not None and t not in _SCALARS:
            return None
    event_time = _epoch(d["event_time"])
    produced_at = _epoch(d["produced_at"])
    ingested = d.get("ingested_at")
    stale, snapshot_at = d.get("stale", False), d.get("snapshot_at")
    if type(stale) is not bool or (snapshot_at is not None and _epoch(snapshot_at) is None):
        return None
    arrival = produced_at if ingested is None else _epoch(ingested)
    if event_time is None or produced_at is None or arrival is None:
        return None
    snapshot_ts = None if snapshot_at is None else _epoch(snapshot_at)
    return ValidSignal(
        event_id, source, version, entity_id, fields, event_time, arrival, stale, snapshot_ts
    )


def _epoch(stamp: Any) -> float | None:
    if type(stamp) is not str or _STAMP.fullmatch(stamp) is None:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:  # a field out of range (month 13, second 60): pydantic's call
        return None
