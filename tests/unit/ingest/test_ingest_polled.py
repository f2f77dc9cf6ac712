"""Polled sources: the response mapping, its definitions, the auth secret, the handler path."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.clients.kafka import MemoryPublisher
from libs.common.definitions import (
    Definitions,
    SourceDefinition,
    load_definitions,
    parse_definitions,
)
from libs.common.errors import DefinitionsError, RecordInvalid
from libs.common.schemas import DeadLetter, Signal
from libs.common.settings import Topics
from services.ingest.core import split_body
from services.ingest.core._describe import iso
from services.ingest.core.polled import MISSING, InvalidPollResponse, lookup, map_response
from services.ingest.errors import InvalidBody, PollSecretMissing
from services.ingest.handlers import IngestHandler
from services.ingest.sources import Snapshot, auth_headers

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)  # conftest's fixed clock

POLLED: dict[str, Any] = {
    "name": "weather",
    "entity": "station",
    "fields": {
        "temperature": {"type": "float", "min": -80, "max": 60},
        "wind": {"type": "float", "required": False},
    },
    "poll": {
        "url": "http://127.0.0.1:9/readings",
        "interval_s": 10,
        "max_stale_s": 60,
        "mapping": {
            "records": "data.readings",
            "entity_id": "station.id",
            "event_time": "observed_at",
            "fields": {"temperature": "values.0", "wind": "wind_kmh"},
        },
        "auth": {"header": "X-Api-Key", "env": "WEATHER_API_KEY"},
    },
}


@pytest.fixture(name="definitions_with")
def _definitions_with(definitions: Definitions) -> Callable[[dict[str, Any]], Definitions]:
    """Factory: the unit definitions plus one more source."""
    base = definitions.model_dump(mode="json", exclude_none=True)

    def make(source: dict[str, Any]) -> Definitions:
        return parse_definitions({**base, "sources": [*base["sources"], source]})

    return make


@pytest.fixture(name="polled_definitions")
def _polled_definitions(definitions_with: Callable[[dict[str, Any]], Definitions]) -> Definitions:
    return definitions_with(POLLED)


@pytest.fixture(name="weather")
def _weather(polled_definitions: Definitions) -> SourceDefinition:
    return polled_definitions.source("weather")


@pytest.fixture(name="polled_handler")
def _polled_handler(polled_definitions: Definitions, publisher: MemoryPublisher) -> IngestHandler:
    return IngestHandler(polled_definitions, publisher, Topics(), clock=lambda: NOW)


def reading(station: Any = "st-1", temperature: Any = 12.5, **extra: Any) -> dict[str, Any]:
    return {
        "station": {"id": station},
        "observed_at": iso(NOW - timedelta(seconds=30)),
        "values": [temperature],
        **extra,
    }


def body(*records: Any) -> bytes:
    return json.dumps({"data": {"readings": list(records)}}).encode()


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        ({"a": {"b": 1}}, "a.b", 1),
        ({"a": [{"b": 2}, {"b": 3}]}, "a.1.b", 3),
        ({"a": None}, "a", None),
        ({"a": [1]}, "a.5", MISSING),
        ({"a": 1}, "a.b", MISSING),
        ([1, 2], "0", 1),
        ({"0": "key"}, "0", "key"),
    ],
)
def test_lookup_follows_keys_and_list_indexes(document: Any, path: str, expected: Any) -> None:
    """A dotted path walks object keys and list indexes; a dead end is MISSING, not None."""
    assert lookup(document, path) == expected


def test_response_maps_to_signals_of_the_source(weather: SourceDefinition) -> None:
    """Each record becomes a signal: entity, event time and the mapped fields; an absent
    optional path leaves its field out; an integer entity id becomes a string."""
    items = map_response(body(reading(), reading(station=7, wind_kmh=30.0)), weather, NOW)
    assert [i.record for i in items] == [
        {
            "source": "weather",
            "entity_id": "st-1",
            "event_time": iso(NOW - timedelta(seconds=30)),
            "fields": {"temperature": 12.5},
            "schema_version": 1,
        },
        {
            "source": "weather",
            "entity_id": "7",
            "event_time": iso(NOW - timedelta(seconds=30)),
            "fields": {"temperature": 12.5, "wind": 30.0},
            "schema_version": 1,
        },
    ]
    # Each record's bytes are the signal itself, so its dead letter replays to signals.raw.
    assert [json.loads(i.raw) for i in items] == [i.record for i in items]


def test_records_without_event_time_path_take_the_poll_time(
    definitions_with: Callable[[dict[str, Any]], Definitions],
) -> None:
    """A mapping naming no event time stamps records with the time of the poll."""
    source = {**POLLED, "poll": {**POLLED["poll"], "mapping": {**POLLED["poll"]["mapping"]}}}
    del source["poll"]["mapping"]["event_time"]
    weather = definitions_with(source).source("weather")
    (item,) = map_response(body(reading()), weather, NOW)
    assert item.record["event_time"] == iso(NOW)


@pytest.mark.parametrize(
    ("record", "detail"),
    [
        (42, "record 0 is an integer; poll.mapping reads objects"),
        ({"values": [1.0]}, "entity id at 'station.id' is absent"),
        (reading(station=True), "entity id at 'station.id' is True"),
        (reading(station=""), "entity id at 'station.id' is ''"),
        ({"station": {"id": "x"}, "values": [1]}, "no event time at 'observed_at'"),
    ],
)
def test_unreadable_record_is_rejected_with_its_own_bytes(
    weather: SourceDefinition, record: Any, detail: str
) -> None:
    """A record the mapping cannot read carries an unmapped_record rejection naming why."""
    (item,) = map_response(body(record), weather, NOW)
    assert isinstance(item.record, RecordInvalid)
    assert item.record.reason == "unmapped_record"
    assert item.record.detail.startswith(detail)
    assert json.loads(item.raw) == record


@pytest.mark.parametrize(
    ("response", "error", "match"),
    [
        (b"<html>down</html>", InvalidBody, "not JSON"),
        (b"\xff\xfe", InvalidBody, "not UTF-8"),
        (b'{"data": {}}', InvalidPollResponse, "'data.readings' of source 'weather' is nothing"),
        (b'{"data": {"readings": 3}}', InvalidPollResponse, "is an integer, not a list"),
        (b'{"data": {"readings": [NaN]}}', InvalidBody, "NaN is not valid JSON"),
    ],
)
def test_response_without_records_is_refused_whole(
    weather: SourceDefinition, response: bytes, error: type[Exception], match: str
) -> None:
    """A body with no list of records raises a named error (the poller dead-letters it)."""
    with pytest.raises(error, match=match):
        map_response(response, weather, NOW)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
records = st.one_of(
    json_values,
    st.builds(
        reading,
        station=json_values,
        temperature=json_values,
        wind_kmh=json_values,
        observed_at=st.one_of(json_values, st.datetimes().map(lambda d: d.isoformat() + "Z")),
    ),
)


# The definitions fixture is frozen (shared safely); each example builds its own handler.
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    response=st.one_of(
        st.binary(max_size=64),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.lists(records, max_size=6).map(lambda rs: body(*rs)),
    )
)
async def test_any_response_ends_accepted_or_dead_lettered(
    polled_definitions: Definitions, response: bytes
) -> None:
    """Whatever a source answers, each record is published or dead-lettered with a reason,
    and a body with no records is refused with a named error: never another exception."""
    weather = polled_definitions.source("weather")
    publisher = MemoryPublisher()
    handler = IngestHandler(polled_definitions, publisher, Topics(), clock=lambda: NOW)
    try:
        items = map_response(response, weather, NOW)
    except InvalidBody as exc:
        assert exc.reason in {"invalid_json", "invalid_poll_response"}
        await handler.on_invalid_body(response, exc, source="weather")
        assert len(publisher.sent[Topics().dlq]) == 1
        return
    accepted = await handler.on_polled("weather", items)
    letters = [DeadLetter.from_bytes(v) for _, v in publisher.sent.get(Topics().dlq, [])]
    assert len(accepted) + len(letters) == len(items)
    assert len(publisher.sent.get(Topics().valid, [])) == len(accepted)
    assert all(letter.reason and letter.source == "weather" for letter in letters)


async def test_stale_snapshot_keeps_ids_and_is_flagged(
    polled_handler: IngestHandler, publisher: MemoryPublisher, weather: SourceDefinition
) -> None:
    """A re-emitted snapshot keeps each record's event id and is flagged with its poll time."""
    accepted = await polled_handler.on_polled(
        "weather", map_response(body(reading(), reading(station="st-2")), weather, NOW)
    )
    taken = NOW - timedelta(seconds=20)
    stale = [s.model_copy(update={"stale": True, "snapshot_at": taken}) for s in accepted]
    await polled_handler.on_stale("weather", stale)

    sent = [Signal.from_bytes(v) for _, v in publisher.sent[Topics().valid]]
    fresh, again = sent[:2], sent[2:]
    assert [s.stale for s in fresh] == [False, False]
    assert [s.stale for s in again] == [True, True]
    assert {s.snapshot_at for s in again} == {taken}
    assert [s.event_id for s in again] == [s.event_id for s in fresh]


async def test_a_client_cannot_mark_its_own_record_stale(
    handler: IngestHandler, publisher: MemoryPublisher, make_signal: Any
) -> None:
    """`stale` and `snapshot_at` are ingest's lineage: a pushed value is overwritten."""
    record = json.dumps(make_signal(stale=True, snapshot_at=iso(NOW))).encode()
    result = await handler.on_signals(split_body(record, wrapper="signals", max_records=10))
    assert len(result.accepted) == 1
    (signal,) = [Signal.from_bytes(v) for _, v in publisher.sent[Topics().valid]]
    assert (signal.stale, signal.snapshot_at) == (False, None)


def test_snapshot_round_trips_through_its_bytes(weather: SourceDefinition) -> None:
    """The cached snapshot reads back with the same signals and poll time."""
    signal = Signal(source="weather", entity_id="st-1", event_time=NOW, fields={"temperature": 1.5})
    snapshot = Snapshot(NOW, [signal])
    back = Snapshot.from_bytes(snapshot.to_bytes())
    assert back.taken_at == NOW and back.signals == [signal]
    assert back.age_s(NOW + timedelta(seconds=90)) == 90.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"mapping": {"entity_id": "id", "fields": {"humidity": "h"}}},
            r"maps \['humidity'\], which are not fields of the source",
        ),
        ({"url": "ftp://example.com/x"}, "poll.url"),
        ({"mapping": {"entity_id": "a..b", "fields": {}}}, "poll.mapping.entity_id"),
        (
            {"auth": {"env": "A", "file": "/run/secrets/a"}},
            "exactly one of 'env'",
        ),
        ({"interval_s": 0}, "poll.interval_s"),
    ],
)
def test_bad_poll_blocks_are_refused_at_start(
    definitions_with: Callable[[dict[str, Any]], Definitions], change: dict[str, Any], match: str
) -> None:
    """The definitions file names the offending poll setting and the fix."""
    source = {**POLLED, "poll": {**POLLED["poll"], **change}}
    with pytest.raises(DefinitionsError, match=match):
        definitions_with(source)


def test_auth_header_comes_from_the_environment_or_a_file(
    definitions_with: Callable[[dict[str, Any]], Definitions], tmp_path: Path
) -> None:
    """The header's value is read from the named variable or file, with its scheme."""
    weather = definitions_with(POLLED).source("weather")
    assert auth_headers(weather, {"WEATHER_API_KEY": "s3cret"}) == {"X-Api-Key": "s3cret"}

    secret = tmp_path / "token"
    secret.write_text("t0ken\n")
    auth = {"header": "Authorization", "scheme": "Bearer", "file": str(secret)}
    by_file = definitions_with({**POLLED, "poll": {**POLLED["poll"], "auth": auth}})
    assert auth_headers(by_file.source("weather"), {}) == {"Authorization": "Bearer t0ken"}


def test_missing_secret_names_where_it_should_be(
    definitions_with: Callable[[dict[str, Any]], Definitions], tmp_path: Path
) -> None:
    """An unset variable or unreadable file fails at start, naming it (never a value)."""
    weather = definitions_with(POLLED).source("weather")
    with pytest.raises(PollSecretMissing, match="'WEATHER_API_KEY', which is unset or empty"):
        auth_headers(weather, {"WEATHER_API_KEY": " "})
    auth = {"file": str(tmp_path / "absent")}
    by_file = definitions_with({**POLLED, "poll": {**POLLED["poll"], "auth": auth}})
    with pytest.raises(PollSecretMissing, match="cannot be read"):
        auth_headers(by_file.source("weather"), {})


def test_example_polled_definitions_file_is_valid() -> None:
    """examples/polled.yaml, the documented example, passes validation."""
    definitions = load_definitions(Path(__file__).resolve().parents[3] / "examples/polled.yaml")
    poll = definitions.source("plant_api").poll
    assert poll is not None and poll.auth is not None and poll.auth.env == "PLANT_API_TOKEN"
