"""A polled source's HTTP response -> signal records, by the source's `poll.mapping` (pure).

Each mapped record is then validated like a pushed one (`validate_polled`), so it is
accepted or dead-lettered the same way. A record the mapping cannot read is rejected
as `unmapped_record` with its own bytes; a response holding no list of records is
refused whole (`InvalidPollResponse`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from libs.common.definitions import Definitions, PollMapping, SourceDefinition
from libs.common.errors import RecordInvalid
from libs.common.schemas import Signal
from services.ingest.core._describe import iso, json_type, show
from services.ingest.core.batch import RecordItem, parse_json
from services.ingest.core.reasons import INVALID_POLL_RESPONSE, UNMAPPED_RECORD
from services.ingest.core.schema_drift import DriftTally
from services.ingest.core.validation import validate_signal
from services.ingest.errors import InvalidBody


class InvalidPollResponse(InvalidBody):
    """A polled response whose records path does not name a list; dead-lettered whole."""

    reason = INVALID_POLL_RESPONSE


class _Missing:
    """What `lookup` finds where a path leads nowhere (a JSON null is a value)."""


MISSING = _Missing()


def lookup(document: Any, path: str) -> Any:
    """The value at a dotted `path` ("data.items", "readings.0.value"), else MISSING."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isascii() and part.isdigit():
            index = int(part)
            if index >= len(value):
                return MISSING
            value = value[index]
        else:
            return MISSING
    return value


def map_response(body: bytes, source: SourceDefinition, polled_at: datetime) -> list[RecordItem]:
    """The records of one polled response, as signal records in response order.

    Args:
        body: the response body.
        source: the polled source (its `poll` is set).
        polled_at: when the poll was answered: the event time of records whose
            mapping names none.

    Returns:
        One RecordItem per record: `record` is the signal as a dict and `raw` its JSON
        bytes (replayable to signals.raw), or, when the mapping cannot read it,
        `record` is its RecordInvalid and `raw` the record's own JSON.

    Raises:
        InvalidBody: the body is not strict UTF-8 JSON.
        InvalidPollResponse: the records path does not lead to a list.
    """
    if source.poll is None:
        raise ValueError(f"source {source.name!r} has no poll block")
    mapping = source.poll.mapping
    payload = parse_json(body)
    records = payload if mapping.records is None else lookup(payload, mapping.records)
    if not isinstance(records, list):
        where = "the response" if mapping.records is None else f"{mapping.records!r}"
        found = "nothing" if records is MISSING else json_type(records)
        raise InvalidPollResponse(
            f"{where} of source {source.name!r} is {found}, not a list of records; fix "
            "the source or its poll.mapping.records"
        )
    return [_map_record(i, r, source, mapping, polled_at) for i, r in enumerate(records)]


def _map_record(
    index: int, record: Any, source: SourceDefinition, mapping: PollMapping, polled_at: datetime
) -> RecordItem:
    def unmapped(detail: str) -> RecordItem:
        raw = json.dumps(record, separators=(",", ":")).encode()
        return RecordItem(index, raw, RecordInvalid(UNMAPPED_RECORD, detail=detail))

    if not isinstance(record, dict):
        return unmapped(f"record {index} is {json_type(record)}; poll.mapping reads objects")
    entity = lookup(record, mapping.entity_id)
    if isinstance(entity, bool) or not isinstance(entity, str | int) or entity == "":
        found = "absent" if entity is MISSING else show(entity)
        return unmapped(
            f"entity id at {mapping.entity_id!r} is {found}; it must be a non-empty string "
            "or an integer"
        )
    event_time: Any = iso(polled_at)
    if mapping.event_time is not None:
        event_time = lookup(record, mapping.event_time)
        if event_time is MISSING:
            return unmapped(f"no event time at {mapping.event_time!r}")
    fields = {
        name: value
        for name, path in mapping.fields.items()
        if (value := lookup(record, path)) is not MISSING
    }
    signal = {
        "source": source.name,
        "entity_id": str(entity),
        "event_time": event_time,
        "fields": fields,
        "schema_version": source.version,
    }
    raw = json.dumps(signal, separators=(",", ":")).encode()
    return RecordItem(index, raw, signal)


def validate_polled(
    record: Any,
    definitions: Definitions,
    now: datetime,
    *,
    tally: DriftTally | None = None,
    ingest_version: str | None = None,
) -> Signal:
    """`validate_signal` (drift tallied, lineage stamped), or the mapping's own
    rejection of the record.

    Raises:
        RecordInvalid: as validate_signal, or `unmapped_record`.
    """
    if isinstance(record, RecordInvalid):
        raise record
    return validate_signal(record, definitions, now, tally=tally, ingest_version=ingest_version)
