"""Features handler against in-memory fakes: vectors, idempotence, dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.common.clients.kafka import DeadLetters, Delivery, MemoryPublisher
from libs.common.clients.redis import MemoryFeatureStore
from libs.common.definitions import load_definitions
from libs.common.offline import SIGNALS, OfflineStore
from libs.common.schemas import DeadLetter, Signal
from libs.common.settings import Topics
from libs.common.testing import delivery
from services.features.handlers import FeaturesHandler

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _record(signal: Signal, offset: int) -> Delivery[Signal]:
    return delivery("signals.valid", signal, offset, key=signal.entity_id)


def _signal(entity: str, minutes: float, temp: float, status: str = "ok") -> Signal:
    return Signal.model_validate(
        {
            "source": "sensors",
            "entity_id": entity,
            "event_time": (T0 + timedelta(minutes=minutes)).isoformat(),
            "fields": {"temperature": temp, "vibration": 1.0, "status": status},
        }
    )


@pytest.fixture(name="handler")
def _handler(tmp_path: Path) -> FeaturesHandler:
    return FeaturesHandler(
        load_definitions(REPO / "signalops.yaml"),
        MemoryFeatureStore(),
        DeadLetters(MemoryPublisher(), Topics().dlq, "features"),
        Topics(),
        OfflineStore(tmp_path / "offline"),
    )


async def test_vector_reflects_windows_as_of_newest_event(handler: FeaturesHandler) -> None:
    """The 5-minute mean only sees events within 5 minutes of the newest event."""
    batch = [_signal("d1", 0, 10.0), _signal("d1", 8, 20.0), _signal("d1", 10, 30.0, "error")]
    out = await handler.on_valid_signals([_record(s, i) for i, s in enumerate(batch)])
    (vec,) = out
    assert vec.values["temperature_last"] == 30.0
    assert vec.values["temperature_mean_5m"] == pytest.approx(25.0)
    assert vec.values["temperature_max_1h"] == 30.0
    assert vec.values["error_rate_1h"] == pytest.approx(1 / 3)
    assert vec.values["events_1h"] == 3.0
    assert vec.values["pressure_last"] is None


async def test_replaying_a_batch_gives_the_same_state(handler: FeaturesHandler) -> None:
    """At-least-once delivery: the same batch twice leaves identical vectors."""
    recs = [_record(_signal("d2", m, 10.0 + m), m) for m in range(5)]
    first = await handler.on_valid_signals(recs)
    second = await handler.on_valid_signals(recs)
    assert first[0].values == second[0].values
    assert second[0].values["events_1h"] == 5.0
    rows = handler.offline.read(SIGNALS).num_rows if handler.offline else 0
    assert rows == 5


async def test_unknown_source_is_dead_lettered_once_per_record(
    handler: FeaturesHandler,
) -> None:
    """A source the definitions lack ends in the DLQ with its reason; handling the same
    batch again builds the same dead letter (same id), so a retry never adds a new one.
    """
    unknown = Signal.model_validate(
        {
            "source": "elsewhere",
            "entity_id": "x",
            "event_time": T0.isoformat(),
            "fields": {"a": 1},
        }
    )
    batch = [_record(_signal("d9", 1, 1.0), 0), _record(unknown, 1)]
    await handler.on_valid_signals(batch)
    await handler.on_valid_signals(batch)
    dlq = handler.dead_letters.publisher.messages["signals.dlq"]  # type: ignore[attr-defined]
    assert [m.reason for m in dlq] == ["unknown_source", "unknown_source"]
    assert isinstance(dlq[0], DeadLetter) and dlq[0].original == unknown.to_bytes()
    assert dlq[0].original_topic == "signals.valid" and dlq[0].source == "elsewhere"
    assert dlq[0].event_id == dlq[1].event_id


async def test_late_batch_never_moves_vector_backwards(handler: FeaturesHandler) -> None:
    """A batch holding only older events does not overwrite a newer vector."""
    await handler.on_valid_signals([_record(_signal("d3", 30, 50.0), 0)])
    await handler.on_valid_signals([_record(_signal("d3", 1, 5.0), 1)])
    (found,) = await handler.store.read_vectors([("device_stats", 1)], ["d3"])
    assert found["device_stats"].values["temperature_last"] == 50.0
