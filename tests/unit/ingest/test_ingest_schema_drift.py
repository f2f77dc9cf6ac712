"""Schema drift: detection in validation, the drift log's counts and rate-limited events,
the handler's quarantine and schema events, late policy and lineage (issue 9)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from libs.common.clients.kafka import MemoryPublisher
from libs.common.definitions import Definitions, parse_definitions
from libs.common.errors import RecordInvalid
from libs.common.schemas import DeadLetter, SchemaDriftDetected, Signal
from libs.common.settings import Topics
from services.ingest.adapters.http import create_app
from services.ingest.core.batch import split_body
from services.ingest.core.schema_drift import DriftTally
from services.ingest.core.validation import validate_signal
from services.ingest.drift_log import OTHER_FIELDS, SchemaDriftLog
from services.ingest.handlers import IngestHandler
from services.ingest.observation import SignalObserver
from services.ingest.settings import IngestSettings

Record = dict[str, Any]
NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)  # the conftest's `now`


def _validate(record: Record, definitions: Definitions) -> tuple[Signal, DriftTally]:
    tally: DriftTally = Counter()
    return validate_signal(record, definitions, NOW, tally=tally), tally


# --- detection --------------------------------------------------------------------------

ADDITIVE: list[tuple[str, Record, dict[str, Any], set[tuple[str, str, str, str]]]] = [
    (
        "unknown_field_dropped",
        {"temperature": 21.5, "status": "ok", "count": 1, "active": True, "note": "", "hum": 4},
        {"temperature": 21.5, "status": "ok", "count": 1, "active": True, "note": ""},
        {("sensors", "unknown_field", "hum", "an integer")},
    ),
    (
        "missing_optionals",
        {"temperature": 21.5, "status": "ok"},
        {"temperature": 21.5, "status": "ok"},
        {("sensors", "missing_optional", f, "absent") for f in ("count", "active", "note")},
    ),
    (
        "int_for_float_coerced",
        {"temperature": 21, "status": "ok", "count": 2.0, "active": False, "note": None},
        {"temperature": 21.0, "status": "ok", "count": 2, "active": False, "note": None},
        {
            ("sensors", "type_coerced", "temperature", "an integer"),
            ("sensors", "type_coerced", "count", "a number"),
        },
    ),
]


@pytest.mark.parametrize(
    ("fields", "published", "drift"),
    [pytest.param(f, p, d, id=name) for name, f, p, d in ADDITIVE],
)
def test_additive_drift_passes_and_is_tallied(
    fields: Record,
    published: dict[str, Any],
    drift: set[tuple[str, str, str, str]],
    make_signal: Callable[..., Record],
    definitions: Definitions,
) -> None:
    """Unknown fields are dropped, missing optional ones pass, numbers take the declared
    type; each difference is tallied once under its kind."""
    signal, tally = _validate(make_signal(fields=fields), definitions)
    assert signal.fields == published
    assert [type(v) for v in signal.fields.values()] == [type(v) for v in published.values()]
    assert set(tally) == drift and set(tally.values()) == {1}


BREAKING: list[tuple[str, Callable[[Record], Record], str, tuple[str, str, str, str]]] = [
    (
        "newer_version",
        lambda r: {**r, "schema_version": 3},
        "schema_breaking",
        ("sensors", "new_version", "schema_version", "3"),
    ),
    (
        "required_missing",
        lambda r: {**r, "fields": {"temperature": 1.0}},
        "missing_field",
        ("sensors", "missing_required", "status", "absent"),
    ),
    (
        "required_null",
        lambda r: {**r, "fields": {"temperature": None, "status": "ok"}},
        "missing_field",
        ("sensors", "missing_required", "temperature", "null"),
    ),
    (
        "string_for_float",
        lambda r: {**r, "fields": {"temperature": "21.5", "status": "ok"}},
        "wrong_type",
        ("sensors", "type_changed", "temperature", "a string"),
    ),
    (
        "fraction_for_int",
        lambda r: {**r, "fields": {"temperature": 1.0, "status": "ok", "count": 1.5}},
        "wrong_type",
        ("sensors", "type_changed", "count", "a number"),
    ),
]


@pytest.mark.parametrize(
    ("mutate", "reason", "key"),
    [pytest.param(m, r, k, id=name) for name, m, r, k in BREAKING],
)
def test_breaking_drift_is_rejected_and_tallied(
    mutate: Callable[[Record], Record],
    reason: str,
    key: tuple[str, str, str, str],
    make_signal: Callable[..., Record],
    definitions: Definitions,
) -> None:
    """A newer version, a missing required field or a type that does not convert is
    rejected with its reason, and the drift is tallied before the rejection."""
    tally: DriftTally = Counter()
    with pytest.raises(RecordInvalid) as info:
        validate_signal(mutate(make_signal()), definitions, NOW, tally=tally)
    assert info.value.reason == reason
    assert tally[key] == 1


def test_older_version_is_a_mismatch_not_drift(definitions: Definitions) -> None:
    """A version below the registered one stays schema_version_mismatch, with no drift."""
    tally: DriftTally = Counter()
    record = {
        "source": "payments",
        "entity_id": "c",
        "event_time": "2026-11-22T09:59:00Z",
        "schema_version": 1,
        "fields": {"amount": 1.0},
    }
    with pytest.raises(RecordInvalid, match="schema_version is 1 but source 'payments'"):
        validate_signal(record, definitions, NOW, tally=tally)
    assert not tally


_EXTRA_NAMES = st.text("abcdefghij_", min_size=1, max_size=8).filter(
    lambda n: n not in {"temperature", "count", "active", "status", "note"}
)
_JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.text(max_size=5))


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(extra=st.dictionaries(_EXTRA_NAMES, _JSON_SCALARS, max_size=6))
def test_any_unknown_fields_are_accepted_dropped_and_counted_once(
    extra: Record, definitions: Definitions
) -> None:
    """Whatever unknown fields a valid record carries, it is accepted with exactly its
    declared fields, each unknown field tallied once, and its id ignores them."""
    declared: Record = {"temperature": 1.5, "status": "ok", "count": 3, "active": True, "note": ""}
    base: Record = {
        "source": "sensors",
        "entity_id": "d",
        "event_time": "2026-11-22T09:59:00Z",
        "fields": declared,
    }
    plain, _ = _validate(base, definitions)
    signal, tally = _validate({**base, "fields": {**declared, **extra}}, definitions)
    assert signal.fields == plain.fields and signal.event_id == plain.event_id
    unknown = {k[2]: n for k, n in tally.items() if k[1] == "unknown_field"}
    assert unknown == dict.fromkeys(extra, 1)


# --- the drift log ----------------------------------------------------------------------


def _tally(*keys: tuple[str, str, str, str]) -> DriftTally:
    return Counter(keys)


def test_first_sighting_emits_then_rate_limited(definitions: Definitions) -> None:
    """The first sighting of a key is an event; more within the interval only count; the
    next one after it reports the sightings since."""
    log = SchemaDriftLog(definitions, interval_s=60)
    key = ("sensors", "unknown_field", "hum", "a number")
    first = log.record(_tally(key, key), NOW)
    assert [(e.kind, e.field, e.count, e.total, e.breaking) for e in first] == [
        ("unknown_field", "hum", 2, 2, False)
    ]
    assert log.record(_tally(key), NOW + timedelta(seconds=30)) == []
    later = log.record(_tally(key), NOW + timedelta(seconds=61))
    assert [(e.count, e.total, e.first_seen, e.last_seen) for e in later] == [
        (2, 4, NOW, NOW + timedelta(seconds=61))
    ]
    report = log.report("sensors")
    assert report["counts"] == {"unknown_field": 4}
    assert report["observed"][0]["first_seen"] == "2026-11-22T10:00:00Z"
    assert report["observed"][0]["last_seen"] == "2026-11-22T10:01:01Z"
    assert log.report("payments") == {"counts": {}, "observed": []}


def test_rearmed_events_are_due_at_the_next_sighting(definitions: Definitions) -> None:
    """Events whose publish failed are re-sent at the next sighting, counts included."""
    log = SchemaDriftLog(definitions, interval_s=3600)
    key = ("sensors", "new_version", "schema_version", "2")
    events = log.record(_tally(key), NOW)
    assert events[0].breaking
    log.rearm(events)
    again = log.record(_tally(key), NOW + timedelta(seconds=1))
    assert [(e.count, e.total) for e in again] == [(2, 2)]


def test_distinct_keys_per_source_are_bounded(definitions: Definitions) -> None:
    """A sender inventing field names grows the log to its bound, then counts under '*'."""
    log = SchemaDriftLog(definitions, interval_s=60, max_keys_per_source=3)
    log.record(Counter({("sensors", "unknown_field", f"f{i}", "null"): 1 for i in range(10)}), NOW)
    fields = [o["field"] for o in log.report("sensors")["observed"]]
    assert len(fields) == 4 and OTHER_FIELDS in fields
    assert sum(o["count"] for o in log.report("sensors")["observed"]) == 10


# --- the handler ------------------------------------------------------------------------


def _with_late_policy(definitions: Definitions, policy: str) -> Definitions:
    spec = definitions.model_dump(mode="json")
    spec["sources"][0]["late_policy"] = policy
    return parse_definitions(spec)


def _handler(definitions: Definitions, publisher: MemoryPublisher) -> IngestHandler:
    return IngestHandler(
        definitions,
        publisher,
        Topics(),
        clock=lambda: NOW,
        observer=SignalObserver(definitions, event_interval_s=60),
        ingest_version="9.9.9-test",
    )


async def _post(handler: IngestHandler, records: list[Record]) -> None:
    await handler.on_signals(split_body(json.dumps(records).encode(), wrapper="s", max_records=99))


async def test_additive_change_passes_with_one_schema_event(
    make_signal: Callable[..., Record], definitions: Definitions
) -> None:
    """Records with a new field are published without it, and the change is reported by
    one event on schema.events however many records carry it."""
    publisher = MemoryPublisher()
    handler = _handler(definitions, publisher)
    drifted = [
        make_signal(entity_id=f"d{i}", fields={"temperature": 1.0, "status": "ok", "hum": 3.5})
        for i in range(5)
    ]
    await _post(handler, drifted[:3])
    await _post(handler, drifted[3:])
    assert len(publisher.messages[Topics().valid]) == 5
    assert all("hum" not in m.fields for m in publisher.messages[Topics().valid])  # type: ignore[attr-defined]
    events = [SchemaDriftDetected.from_bytes(v) for _, v in publisher.sent[Topics().schema_events]]
    unknown = [e for e in events if e.kind == "unknown_field"]
    assert [(e.field, e.count, e.breaking, e.source_version) for e in unknown] == [
        ("hum", 3, False, 1)
    ]
    assert [k for k, _ in publisher.sent[Topics().schema_events]] == ["sensors"] * len(events)


async def test_breaking_change_is_quarantined_with_an_event(
    make_signal: Callable[..., Record], definitions: Definitions
) -> None:
    """A record of an unknown newer version is dead-lettered schema_breaking with its
    bytes, and a breaking new_version event names the version seen."""
    publisher = MemoryPublisher()
    handler = _handler(definitions, publisher)
    await _post(handler, [make_signal(schema_version=2)])
    letters = [DeadLetter.from_bytes(v) for _, v in publisher.sent[Topics().dlq]]
    assert [(d.reason, d.source) for d in letters] == [("schema_breaking", "sensors")]
    events = [SchemaDriftDetected.from_bytes(v) for _, v in publisher.sent[Topics().schema_events]]
    assert [(e.kind, e.field, e.observed, e.breaking) for e in events] == [
        ("new_version", "schema_version", "2", True)
    ]


async def test_late_records_follow_the_source_policy(
    make_signal: Callable[..., Record], definitions: Definitions
) -> None:
    """accept_flagged publishes a too-old record with late=true; dead_letter (the
    default) dead-letters it too_late; a timely record is never flagged."""
    old = (NOW - timedelta(hours=2)).isoformat()
    for policy, expect_late in (("accept_flagged", True), ("dead_letter", False)):
        publisher = MemoryPublisher()
        handler = _handler(_with_late_policy(definitions, policy), publisher)
        await _post(handler, [make_signal(event_time=old), make_signal(entity_id="fresh")])
        valid = publisher.messages[Topics().valid]
        letters = [DeadLetter.from_bytes(v) for _, v in publisher.sent[Topics().dlq]]
        flags = {m.entity_id: m.late for m in valid}  # type: ignore[attr-defined]
        if expect_late:
            assert flags == {"device-1": True, "fresh": False} and letters == []
        else:
            assert flags == {"fresh": False} and [d.reason for d in letters] == ["too_late"]


def test_lineage_is_stamped_and_outside_the_event_id(
    make_signal: Callable[..., Record], definitions: Definitions
) -> None:
    """ingest_version and late are ingest's: a client's values are replaced, and the
    content-derived id does not change with them."""
    plain = validate_signal(make_signal(), definitions, NOW, ingest_version="1.2.3")
    forged = validate_signal(
        make_signal(ingest_version="evil", late=True), definitions, NOW, ingest_version="1.2.4"
    )
    assert (plain.ingest_version, forged.ingest_version) == ("1.2.3", "1.2.4")
    assert forged.late is False and plain.event_id == forged.event_id
    assert Signal.from_bytes(plain.to_bytes()).ingest_version == "1.2.3"


async def test_sources_endpoint_shows_observed_drift(
    make_signal: Callable[..., Record], definitions: Definitions
) -> None:
    """GET /v1/sources lists each source's drift counts by kind and field with first and
    last sightings, and its quality rates."""
    publisher = MemoryPublisher()
    handler = _handler(definitions, publisher)
    app = create_app(handler, IngestSettings(), definitions)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        record = make_signal(fields={"temperature": 1.0, "status": "ok", "hum": 1})
        assert (await client.post("/v1/signals", json=record)).status_code == 202
        body = (await client.get("/v1/sources")).json()
    sensors = next(s for s in body["sources"] if s["name"] == "sensors")
    drift = sensors["observed"]["drift"]
    assert drift["counts"] == {"missing_optional": 3, "unknown_field": 1}
    hum = next(o for o in drift["observed"] if o["field"] == "hum")
    assert hum == {
        "kind": "unknown_field",
        "field": "hum",
        "observed": "an integer",
        "breaking": False,
        "count": 1,
        "first_seen": "2026-11-22T10:00:00Z",
        "last_seen": "2026-11-22T10:00:00Z",
    }
    assert sensors["observed"]["quality"]["records"] == 1
    assert sensors["observed"]["quality"]["rates"]["count.null"] == 1.0


class _SchemaTopicDown(MemoryPublisher):
    """The broker takes signals and dead letters but refuses the schema-events topic."""

    async def publish_many(self, items: Any) -> None:
        if any(topic == Topics().schema_events for topic, _, _ in items):
            raise TimeoutError("schema.events not acknowledged")
        await super().publish_many(items)


async def test_unpublished_schema_events_leave_the_batch_and_come_again(
    make_signal: Callable[..., Record], definitions: Definitions
) -> None:
    """When schema events cannot be published the batch still stands (accepted, no 5xx),
    and the events come again, with every sighting counted, once the topic takes them."""
    publisher = _SchemaTopicDown()
    handler = _handler(definitions, publisher)
    record = make_signal(fields={"temperature": 1.0, "status": "ok", "count": 1, "hum": 1})
    record["fields"] |= {"active": True, "note": ""}
    result = await handler.on_signals(
        split_body(json.dumps([record]).encode(), wrapper="s", max_records=9)
    )
    assert len(result.accepted) == 1 and publisher.sent[Topics().schema_events] == []
    working = MemoryPublisher()
    handler.publisher = working
    await _post(handler, [{**record, "entity_id": "device-2"}])
    events = [SchemaDriftDetected.from_bytes(v) for _, v in working.sent[Topics().schema_events]]
    assert [(e.kind, e.field, e.count, e.total) for e in events] == [("unknown_field", "hum", 2, 2)]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_follow_each_batch(
    make_signal: Callable[..., Record], definitions: Definitions
) -> None:
    """One batch moves the per-source throughput, drift, late, null and arrival-lag
    series, and a field whose nulls exceed its threshold shows as a breach."""
    handler = _handler(_with_late_policy(definitions, "accept_flagged"), MemoryPublisher())
    before = {
        "records": _sample("signalops_ingest_source_records_total", source="sensors"),
        "drift": _sample(
            "signalops_ingest_schema_drift_total", source="sensors", kind="missing_optional"
        ),
        "late": _sample(
            "signalops_ingest_late_records_total", source="sensors", policy="accept_flagged"
        ),
        "lag": _sample("signalops_ingest_arrival_lag_seconds_count", source="sensors"),
    }
    old = (NOW - timedelta(hours=2)).isoformat()
    await _post(handler, [make_signal(entity_id=f"d{i}") for i in range(3)])
    await _post(handler, [make_signal(event_time=old)])
    assert _sample("signalops_ingest_source_records_total", source="sensors") == (
        before["records"] + 4
    )
    assert (
        _sample("signalops_ingest_schema_drift_total", source="sensors", kind="missing_optional")
        == before["drift"] + 4 * 3
    )
    assert (
        _sample("signalops_ingest_late_records_total", source="sensors", policy="accept_flagged")
        == before["late"] + 1
    )
    assert _sample("signalops_ingest_arrival_lag_seconds_count", source="sensors") == (
        before["lag"] + 4
    )
    labels = {"source": "sensors", "field": "count", "check": "null"}
    assert _sample("signalops_ingest_quality_rate", **labels) == 1.0
    assert _sample("signalops_ingest_quality_breach", **labels) == 1.0
    labels["field"] = "temperature"
    assert _sample("signalops_ingest_quality_breach", **labels) == 0.0
