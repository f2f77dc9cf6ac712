"""Features handler against in-memory fakes: vectors, idempotence, dead letters.

The handler's contract (services/features/handlers.py): per consumed batch, the views'
states and vectors in the online store (vector as of the entity's newest event), the
kept signal rows in the offline store, and a dead letter with its reason for each
record it cannot use.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from libs.common.clients.kafka import DeadLetters, Delivery, MemoryPublisher
from libs.common.clients.redis import MemoryFeatureStore, StoredVector
from libs.common.clients.redis.base import vector_key
from libs.common.definitions import Definitions, parse_definitions
from libs.common.features.engine import FeatureVector
from libs.common.offline import SIGNALS, OfflineStore
from libs.common.schemas import DeadLetter, Signal
from libs.common.settings import Topics
from libs.common.testing import delivery
from services.features.core.updates import ViewUpdate
from services.features.handlers import FeaturesHandler

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
VIEW = "device_stats"


def _definitions() -> Definitions:
    """signalops.yaml plus a view with 24 h windows, where the allowed lateness (1 h) of
    the source is inside a window, so a too-late event would show if it counted.
    """
    data = yaml.safe_load((REPO / "signalops.yaml").read_text())
    data["feature_views"].append(
        {
            "name": "device_daily",
            "source": "sensors",
            "features": [
                {"name": "events_24h", "field": "temperature", "agg": "count", "window_s": 86400},
                {
                    "name": "temperature_max_24h",
                    "field": "temperature",
                    "agg": "max",
                    "window_s": 86400,
                },
            ],
        }
    )
    return parse_definitions(data)


DEFINITIONS = _definitions()
LATENESS_S = DEFINITIONS.source("sensors").allowed_lateness_s


def _record(signal: Signal, offset: int) -> Delivery[Signal]:
    return delivery("signals.valid", signal, offset, key=signal.entity_id)


def _signal(entity: str, minutes: float, temp: Any, status: str = "ok", **extra: Any) -> Signal:
    return Signal.model_validate(
        {
            "source": "sensors",
            "entity_id": entity,
            "event_time": (T0 + timedelta(minutes=minutes)).isoformat(),
            "fields": {"temperature": temp, "vibration": 1.0, "status": status},
            **extra,
        }
    )


def _stored(handler: FeaturesHandler, entity: str, view: str = VIEW) -> StoredVector | None:
    store = handler.store
    assert isinstance(store, MemoryFeatureStore)
    version = DEFINITIONS.view(view).version
    return store.vectors.get(vector_key(view, version, entity))


def _vector(updates: list[ViewUpdate], entity: str, view: str = VIEW) -> FeatureVector | None:
    (update,) = [u for u in updates if u.plan.view.name == view]
    return update.vectors[update.entities.index(entity)]


def _dead_letters(handler: FeaturesHandler) -> list[DeadLetter]:
    publisher = handler.dead_letters.publisher
    assert isinstance(publisher, MemoryPublisher)
    letters = publisher.messages["signals.dlq"]
    assert all(isinstance(m, DeadLetter) for m in letters)
    return letters  # type: ignore[return-value]  # checked just above


def _offline_ids(handler: FeaturesHandler) -> list[str]:
    assert handler.offline is not None
    return handler.offline.read(SIGNALS).column("event_id").to_pylist()


@pytest.fixture(name="handler")
def _handler(tmp_path: Path) -> FeaturesHandler:
    return FeaturesHandler(
        DEFINITIONS,
        MemoryFeatureStore(),
        DeadLetters(MemoryPublisher(), Topics().dlq, "features"),
        Topics(),
        OfflineStore(tmp_path / "offline"),
    )


async def test_vectors_are_written_as_of_the_newest_event(handler: FeaturesHandler) -> None:
    """Each entity's vector holds its windows as of its newest event time (not arrival
    order, not wall clock), and is what the store now serves under its vector key.
    """
    batch = [
        _signal("d1", 10, 30.0, "error"),
        _signal("d2", 3, 7.0),
        _signal("d1", 0, 10.0),
        _signal("d1", 8, 20.0),
    ]
    updates = await handler.on_valid_signals([_record(s, i) for i, s in enumerate(batch)])

    vec = _vector(updates, "d1")
    assert vec is not None
    assert vec["temperature_last"] == 30.0
    # The 5 min window as of 10:10 holds 10:08 and 10:10, not 10:00.
    assert vec["temperature_mean_5m"] == pytest.approx(25.0)
    assert vec["temperature_max_1h"] == 30.0
    assert vec["error_rate_1h"] == pytest.approx(1 / 3)
    assert vec["events_1h"] == 3.0
    assert vec["pressure_last"] is None
    stored = _stored(handler, "d1")
    assert stored is not None
    assert stored.values == vec
    assert stored.as_of == (T0 + timedelta(minutes=10)).timestamp()

    other = _stored(handler, "d2")
    assert other is not None and other.values == _vector(updates, "d2")
    assert other.values["temperature_last"] == 7.0 and other.values["events_1h"] == 1.0
    assert other.as_of == (T0 + timedelta(minutes=3)).timestamp()
    daily = _stored(handler, "d1", "device_daily")
    assert daily is not None and daily.values["events_24h"] == 3.0


async def test_a_batch_handled_twice_changes_nothing(handler: FeaturesHandler) -> None:
    """At-least-once delivery: the same batch again leaves identical states and vectors,
    and the offline store holds each Kafka position once.
    """
    store = handler.store
    assert isinstance(store, MemoryFeatureStore) and handler.offline is not None
    recs = [_record(_signal("d2", m, 10.0 + m), m) for m in range(5)]

    await handler.on_valid_signals(recs)
    states = dict(store.states)
    vector = _stored(handler, "d2")
    second = await handler.on_valid_signals(recs)

    assert all(u.applied.duplicate.all() for u in second)
    assert store.states == states
    again = _stored(handler, "d2")
    assert vector is not None and again is not None
    assert (again.values, again.as_of) == (vector.values, vector.as_of)
    assert again.values["events_1h"] == 5.0
    # Raw files, before the readers' deduplication: the replay rewrote the same file.
    files = handler.offline.files(SIGNALS)
    offsets = [o for f in files for o in pq.read_table(f).column("offset").to_pylist()]
    assert sorted(offsets) == [0, 1, 2, 3, 4]


async def test_stale_re_emissions_are_not_counted_again(handler: FeaturesHandler) -> None:
    """A polled source's snapshot re-emitted flagged stale (new Kafka positions, same
    events) changes no state, vector or offline row: nothing is counted twice."""
    store = handler.store
    assert isinstance(store, MemoryFeatureStore) and handler.offline is not None
    fresh = [_signal("d3", m, 20.0 + m) for m in range(3)]
    await handler.on_valid_signals([_record(s, i) for i, s in enumerate(fresh)])
    states, vector = dict(store.states), _stored(handler, "d3")

    stale = [s.model_copy(update={"stale": True, "snapshot_at": T0}) for s in fresh]
    await handler.on_valid_signals([_record(s, 3 + i) for i, s in enumerate(stale)])

    assert store.states == states
    again = _stored(handler, "d3")
    assert vector is not None and again is not None and again.values == vector.values
    assert again.values["events_1h"] == 3.0
    assert sorted(_offline_ids(handler)) == sorted(s.event_id for s in fresh)


async def test_stale_polled_source_is_marked_until_fresh_records_return() -> None:
    """A polled source's stale re-emissions mark it stale in the store for serve (with
    the snapshot's time); its next fresh record unmarks it."""
    data = DEFINITIONS.model_dump(mode="json", exclude_none=True)
    data["sources"][0]["poll"] = {
        "url": "http://127.0.0.1:9/readings",
        "mapping": {"entity_id": "id", "fields": {"temperature": "t"}},
    }
    store = MemoryFeatureStore()
    handler = FeaturesHandler(
        parse_definitions(data),
        store,
        DeadLetters(MemoryPublisher(), Topics().dlq, "features"),
        Topics(),
    )
    first = _signal("d4", 0, 20.0)
    await handler.on_valid_signals([_record(first, 0)])
    assert store.stale == {}

    stale = first.model_copy(update={"stale": True, "snapshot_at": T0})
    await handler.on_valid_signals([_record(stale, 1)])
    assert store.stale == {"sensors": T0.timestamp()}

    await handler.on_valid_signals([_record(_signal("d4", 5, 21.0), 2)])
    assert store.stale == {}


async def test_unplaceable_records_are_dead_lettered_once_per_record(
    handler: FeaturesHandler,
) -> None:
    """An unknown source and an unknown schema version end in the DLQ with their reason;
    handling the batch again builds the same dead letters (same ids), and the batch's
    good record is still applied.
    """
    unknown = Signal.model_validate(
        {"source": "elsewhere", "entity_id": "x", "event_time": T0.isoformat(), "fields": {"a": 1}}
    )
    newer = _signal("d9", 2, 2.0, schema_version=2)
    batch = [_record(_signal("d9", 1, 1.0), 0), _record(unknown, 1), _record(newer, 2)]

    await handler.on_valid_signals(batch)
    first = list(_dead_letters(handler))
    await handler.on_valid_signals(batch)
    letters = _dead_letters(handler)

    assert [m.reason for m in first] == ["unknown_source", "schema_version_mismatch"]
    assert [m.event_id for m in letters] == [m.event_id for m in first] * 2
    assert first[0].original == unknown.to_bytes() and first[0].source == "elsewhere"
    assert first[1].original == newer.to_bytes() and first[1].original_topic == "signals.valid"
    stored = _stored(handler, "d9")
    assert stored is not None and stored.values["events_1h"] == 1.0
    assert _offline_ids(handler) == [batch[0].message.event_id]


async def test_wrong_field_type_is_dead_lettered_and_the_rest_applied(
    handler: FeaturesHandler,
) -> None:
    """A str in a numeric field (even one that reads as a number) dead-letters its record
    as feature_type_mismatch; the batch's other records are applied and stored.
    """
    good = [_signal("d4", 1, 10.0), _signal("d4", 3, 12.0)]
    bad = [_signal("d4", 2, "hot"), _signal("d5", 2, "21.5")]
    batch = [_record(s, i) for i, s in enumerate([good[0], bad[0], bad[1], good[1]])]

    await handler.on_valid_signals(batch)

    letters = _dead_letters(handler)
    assert [m.reason for m in letters] == ["feature_type_mismatch"] * 2
    assert [m.original for m in letters] == [s.to_bytes() for s in bad]
    assert all("temperature" in m.detail and "str" in m.detail for m in letters)
    stored = _stored(handler, "d4")
    assert stored is not None
    assert stored.values["events_1h"] == 2.0 and stored.values["temperature_max_1h"] == 12.0
    assert _stored(handler, "d5") is None
    assert sorted(_offline_ids(handler)) == sorted(s.event_id for s in good)


async def test_too_late_record_is_dead_lettered_and_kept_out(handler: FeaturesHandler) -> None:
    """A record older than the entity's newest by more than the source's allowed lateness
    is dead-lettered too_late, left out of the offline store and of every window; late
    records within the lateness update the windows they fall in.
    """
    newest = 120.0  # minutes after T0
    late_minutes = LATENESS_S / 60
    await handler.on_valid_signals([_record(_signal("d6", newest, 20.0), 0)])

    too_late = _signal("d6", newest - late_minutes - 1, 99.0)
    just_in = _signal("d6", newest - late_minutes + 1, 40.0)
    late = _signal("d6", newest - 30, 50.0)
    await handler.on_valid_signals(
        [_record(s, i) for i, s in enumerate([too_late, just_in, late], 1)]
    )

    (letter,) = _dead_letters(handler)
    assert letter.reason == "too_late" and letter.original == too_late.to_bytes()
    assert f"{LATENESS_S:g} s" in letter.detail
    assert too_late.event_id not in _offline_ids(handler)
    assert {just_in.event_id, late.event_id} <= set(_offline_ids(handler))

    daily = _stored(handler, "d6", "device_daily")
    assert daily is not None
    assert daily.values["events_24h"] == 3.0  # 20.0, 40.0 and 50.0, not 99.0
    assert daily.values["temperature_max_24h"] == 50.0
    stats = _stored(handler, "d6")
    assert stats is not None
    assert stats.values["temperature_max_1h"] == 50.0  # the late 50.0, 30 min back
    assert stats.values["temperature_last"] == 20.0
    assert stats.as_of == (T0 + timedelta(minutes=newest)).timestamp()


async def test_redelivered_too_late_record_stays_out_of_the_offline_store(
    handler: FeaturesHandler,
) -> None:
    """A batch holding a too-late record, delivered again, neither dead-letters it anew
    nor writes it to the offline store.
    """
    await handler.on_valid_signals([_record(_signal("d7", 120, 20.0), 0)])
    too_late = _signal("d7", 0, 99.0)
    batch = [_record(too_late, 1), _record(_signal("d7", 119, 21.0), 2)]
    await handler.on_valid_signals(batch)
    await handler.on_valid_signals(batch)
    assert [m.reason for m in _dead_letters(handler)] == ["too_late"]
    assert too_late.event_id not in _offline_ids(handler)


async def test_late_batch_never_moves_vector_backwards(handler: FeaturesHandler) -> None:
    """A batch holding only older events does not overwrite a newer vector."""
    await handler.on_valid_signals([_record(_signal("d3", 30, 50.0), 0)])
    await handler.on_valid_signals([_record(_signal("d3", 1, 5.0), 1)])
    (found,) = await handler.store.read_vectors([(VIEW, 1)], ["d3"])
    assert found[VIEW].values["temperature_last"] == 50.0
    assert found[VIEW].as_of == (T0 + timedelta(minutes=30)).timestamp()
