"""Validation of one record: its envelope, then its source (or model) definition.

Pure: takes a record, the definitions and the current time; returns the validated
message or raises RecordInvalid with a short reason code and a detail that names
the offending value and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from libs.common.definitions import Definitions
from libs.common.errors import RecordInvalid
from libs.common.schemas import Message, Outcome, Signal
from libs.common.schemas.base import as_utc, stable_id
from services.ingest.core._describe import iso, json_type, show
from services.ingest.core.batch import parse_json
from services.ingest.core.fields import check_fields
from services.ingest.core.reasons import (
    FROM_THE_FUTURE,
    INVALID_ENVELOPE,
    INVALID_JSON,
    OUT_OF_RANGE,
    SCHEMA_BREAKING,
    SCHEMA_VERSION_MISMATCH,
    TOO_LARGE,
    TOO_LATE,
    UNKNOWN_MODEL,
    UNKNOWN_SOURCE,
)
from services.ingest.core.schema_drift import NEW_VERSION, VERSION_FIELD, DriftTally
from services.ingest.errors import InvalidBody, SourceRecordInvalid

_SIGNAL_SHAPE = (
    "a signal is {source, entity_id, event_time (ISO 8601 with timezone), fields, "
    "schema_version, optional event_id}; see GET /v1/sources"
)
_OUTCOME_SHAPE = (
    "an outcome is {model, entity_id, event_time (ISO 8601 with timezone), label, "
    "optional prediction_id, optional event_id}"
)
M = TypeVar("M", bound=Message)


def validate_signal(
    record: bytes | Any,
    definitions: Definitions,
    now: datetime,
    *,
    tally: DriftTally | None = None,
    ingest_version: str | None = None,
) -> Signal:
    """Validate one signal against its envelope and its source definition.

    Args:
        record: the record's bytes (parsed here) or its already parsed JSON value.
        definitions: the registered sources.
        now: the current time (aware), for the lateness and future-skew bounds.
        tally: where the record's schema drift is counted (core/schema_drift.py).
        ingest_version: the build of ingest, stamped on the signal (lineage).

    Returns:
        The signal, with `event_id` derived from its content when absent,
        `ingested_at` set to `now` and `ingest_version` (whatever the client sent:
        lineage is ingest's), unknown fields dropped and numbers converted to their
        declared type, and `late` set when its source accepts late events flagged.

    Raises:
        RecordInvalid: with one of the reason codes of this module.
    """
    # Ingest's own lineage (issue 7): a client's `ingested_at` is replaced before any
    # check, so it can neither be forged nor get a record rejected. Only the poller
    # marks a record stale (issue 9), after validation.
    data = {
        **_as_object(record, _SIGNAL_SHAPE),
        "ingested_at": now,
        "stale": False,
        "snapshot_at": None,
        "late": False,
        "ingest_version": ingest_version,
    }
    fields = data.get("fields")
    if not isinstance(fields, dict):
        raise RecordInvalid(
            INVALID_ENVELOPE,
            detail=f"'fields' is {json_type(fields)}; send an object of field name to value "
            f"({_SIGNAL_SHAPE})",
        )
    version = data.get("schema_version", 1)
    if type(version) is not int:
        raise RecordInvalid(
            INVALID_ENVELOPE,
            detail=f"schema_version is {show(version)}; send the source's version as an "
            "integer, e.g. 1",
        )
    # The envelope first, without the fields: they are checked against the source below,
    # where a wrong value can be named with the type the source expects. A placeholder
    # id spares hashing a content id here; the real one is derived once at the end.
    envelope = _model(
        Signal, {**data, "fields": {}, "event_id": data.get("event_id") or "-"}, _SIGNAL_SHAPE
    )
    try:
        source = definitions.source(envelope.source)
    except KeyError:
        raise RecordInvalid(
            UNKNOWN_SOURCE,
            detail=f"source {envelope.source!r} is not registered (known: "
            f"{', '.join(sorted(s.name for s in definitions.sources))}); fix the name or add "
            "the source to the definitions file",
        ) from None
    if version > source.version:
        # A version the definitions do not know yet: quarantined (dead-lettered) until
        # they declare it, then replayed (README "Schema drift").
        if tally is not None:
            tally[(source.name, NEW_VERSION, VERSION_FIELD, str(version))] += 1
        raise SourceRecordInvalid(
            SCHEMA_BREAKING,
            detail=f"schema_version {version} is newer than source {source.name!r}'s "
            f"registered version {source.version}; declare version {version} of its fields "
            "in the definitions file, restart ingest and replay (signalops dlq replay "
            "--reason schema_breaking), or send version "
            f"{source.version}",
            source=source.name,
        )
    if version != source.version:
        raise RecordInvalid(
            SCHEMA_VERSION_MISMATCH,
            detail=f"schema_version is {version} but source {source.name!r} is at version "
            f"{source.version}; send schema_version {source.version} with its field schema "
            "(GET /v1/sources)",
        )
    checked = check_fields(fields, source, tally)
    flag_late = source.late_policy == "accept_flagged"
    try:
        check_event_time(
            envelope.event_time,
            now,
            lateness_s=math.inf if flag_late else source.allowed_lateness_s,
            future_skew_s=source.max_future_skew_s,
            owner=f"source {source.name!r}",
        )
    except RecordInvalid as exc:
        raise SourceRecordInvalid(exc.reason, detail=exc.detail, source=source.name) from None
    late = flag_late and (now - envelope.event_time).total_seconds() > source.allowed_lateness_s
    return _completed(envelope, data, checked, version, late)


def _completed(
    envelope: Signal, data: dict[str, Any], fields: Mapping[str, Any], version: int, late: bool
) -> Signal:
    """The envelope with its checked fields, its content id and `late`: the signal that
    validating `data` whole would give, without validating it twice (issue 9's profile).

    Nothing here needs pydantic again: `check_fields` returns declared names with values
    of exactly their declared type or None, which `dict[str, FieldValue]` keeps as they
    are; the id is `Signal._derive_event_id`'s (`with_content_id`) over the same values,
    with `event_time` written from the envelope's parse of it, which is how
    `canonical_time` parses it (tests/unit/ingest/test_ingest_validate_once.py checks
    both against the whole validation).
    """
    # The time in the standard library's UTC: written once for the id, once in the
    # record, and pydantic's own zone makes every write slow (libs/common/schemas/base.py).
    event_time = as_utc(envelope.event_time)
    update: dict[str, Any] = {"fields": dict(fields), "late": late, "event_time": event_time}
    if not data.get("event_id"):
        update["event_id"] = stable_id(
            data.get("source"), data.get("entity_id"), iso(event_time), fields, version
        )
    # What `model_copy(update=...)` does, without copying a model nothing else holds
    # (6% of ingest's samples): these keys are already in the envelope's fields set.
    envelope.__dict__.update(update)
    return envelope


def validate_outcome(record: bytes | Any, definitions: Definitions, now: datetime) -> Outcome:
    """Validate one outcome (label): its envelope, its model, a finite label, its time.

    An outcome may be as late as it likes (labels arrive late); it may not come from
    further in the future than the model's sources allow.

    Raises:
        RecordInvalid: with one of the reason codes of this module.
    """
    data = _as_object(record, _OUTCOME_SHAPE)
    outcome = _model(Outcome, data, _OUTCOME_SHAPE)
    try:
        model = definitions.model(outcome.model)
    except KeyError:
        raise RecordInvalid(
            UNKNOWN_MODEL,
            detail=f"model {outcome.model!r} is not defined (known: "
            f"{', '.join(sorted(m.name for m in definitions.models))}); fix the name or add "
            "the model to the definitions file",
        ) from None
    if not math.isfinite(outcome.label):
        raise RecordInvalid(
            OUT_OF_RANGE, detail=f"label is {outcome.label}; send a finite number, e.g. 0 or 1"
        )
    if model.is_binary and outcome.label not in (0.0, 1.0):
        # A 0.7 for a binary model is a bug upstream; rounding it would train on a guess.
        raise RecordInvalid(
            OUT_OF_RANGE,
            detail=f"label is {outcome.label}; model {model.name!r} is a binary classifier "
            f"(objective {model.lightgbm.get('objective', 'binary')!r}): send 0 or 1",
        )
    skew = min(
        definitions.source(view.source).max_future_skew_s
        for view in definitions.views_of_model(model)
    )
    check_event_time(
        outcome.event_time,
        now,
        lateness_s=math.inf,
        future_skew_s=skew,
        owner=f"model {model.name!r}",
    )
    return outcome


def check_event_time(
    event_time: datetime, now: datetime, *, lateness_s: float, future_skew_s: float, owner: str
) -> None:
    """Reject events older than the allowed lateness or further ahead than the skew.

    Raises:
        RecordInvalid: too_late or from_the_future.
    """
    age_s = (now - event_time).total_seconds()
    if age_s > lateness_s:
        raise RecordInvalid(
            TOO_LATE,
            detail=f"event_time {iso(event_time)} is {age_s:.0f}s old; {owner} accepts "
            f"events up to {lateness_s:.0f}s late (allowed_lateness_s in the definitions file)",
        )
    if -age_s > future_skew_s:
        raise RecordInvalid(
            FROM_THE_FUTURE,
            detail=f"event_time {iso(event_time)} is {-age_s:.0f}s ahead of now; {owner} "
            f"accepts up to {future_skew_s:.0f}s of clock skew; check the sender's clock "
            "and timezone",
        )


def check_size(raw: bytes, limit: int) -> None:
    """Reject a record larger than `limit` bytes (it would not fit a Kafka message).

    Raises:
        RecordInvalid: too_large.
    """
    if len(raw) > limit:
        raise RecordInvalid(
            TOO_LARGE, detail=f"record is {len(raw)} bytes; the limit is {limit}, send less"
        )


def record_hints(record: bytes | Any) -> tuple[str | None, str | None]:
    """(source, entity_id) of a possibly invalid record, when they are plain strings.

    Used to key dead letters; never raises.
    """
    if isinstance(record, bytes):
        try:
            record = parse_json(record)
        except InvalidBody:
            return None, None
    if not isinstance(record, dict):
        return None, None
    return _short_str(record.get("source")), _short_str(record.get("entity_id"))


def _short_str(v: Any) -> str | None:
    return v if isinstance(v, str) and 0 < len(v) <= 256 else None


def _as_object(record: bytes | Any, shape: str) -> dict[str, Any]:
    if isinstance(record, bytes):
        try:
            record = parse_json(record)
        except InvalidBody as exc:
            raise RecordInvalid(INVALID_JSON, detail=str(exc)) from None
    if not isinstance(record, dict):
        raise RecordInvalid(INVALID_ENVELOPE, detail=f"record is {json_type(record)}; {shape}")
    if "event_time" not in record:
        raise RecordInvalid(
            INVALID_ENVELOPE,
            detail="event_time is missing; send when it happened, e.g. "
            "'2026-11-22T10:00:00Z' (ids derive from it, so it cannot default to now)",
        )
    return record


def _model(model: type[M], data: dict[str, Any], shape: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        each = [
            f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
            + (f" (got {show(e['input'])})" if e["type"] != "missing" else "")
            for e in exc.errors()
        ]
        raise RecordInvalid(
            INVALID_ENVELOPE, detail=f"{'; '.join(each[:3])}; {shape}", errors=each
        ) from None
