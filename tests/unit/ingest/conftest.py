"""Ingest unit fixtures: definitions covering every field type, a fixed clock, a fake broker."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.common.clients.kafka import MemoryPublisher
from libs.common.definitions import Definitions, parse_definitions
from libs.common.settings import Topics
from services.ingest.handlers import IngestHandler

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)

DEFINITIONS: dict[str, Any] = {
    "sources": [
        {
            "name": "sensors",
            "version": 1,
            "entity": "device",
            "allowed_lateness_s": 3600,
            "max_future_skew_s": 300,
            "fields": {
                "temperature": {"type": "float", "min": -50, "max": 150},
                "count": {"type": "int", "min": 0, "max": 100, "required": False},
                "active": {"type": "bool", "required": False},
                "status": {"type": "str", "allowed": ["ok", "warn", "error"]},
                "note": {"type": "str", "required": False},
            },
        },
        {
            "name": "payments",
            "version": 2,
            "entity": "card",
            "fields": {"amount": {"type": "float", "min": 0}},
        },
    ],
    "feature_views": [
        {
            "name": "device_stats",
            "source": "sensors",
            "features": [{"name": "temperature_last", "field": "temperature", "agg": "last"}],
        },
        {
            "name": "card_activity",
            "source": "payments",
            "features": [{"name": "amount_last", "field": "amount", "agg": "last"}],
        },
    ],
    "models": [
        {"name": "default", "features": ["device_stats.temperature_last"]},
        {"name": "fraud", "features": ["card_activity.amount_last"]},
    ],
}


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _make_signal(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "source": "sensors",
        "entity_id": "device-1",
        "event_time": iso(NOW - timedelta(seconds=5)),
        "fields": {"temperature": 21.5, "status": "ok"},
        "schema_version": 1,
    }
    record.update(overrides)
    return record


def _make_outcome(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "model": "default",
        "entity_id": "device-1",
        "event_time": iso(NOW - timedelta(days=2)),
        "label": 1,
    }
    record.update(overrides)
    return record


@pytest.fixture(name="now")
def _now() -> datetime:
    """The fixed current time of every ingest unit test."""
    return NOW


@pytest.fixture(name="make_signal")
def _make_signal_fixture() -> Callable[..., dict[str, Any]]:
    """Factory of a valid sensors signal 5 s before `now`; keyword arguments override keys."""
    return _make_signal


@pytest.fixture(name="make_outcome")
def _make_outcome_fixture() -> Callable[..., dict[str, Any]]:
    """Factory of a valid outcome of model 'default', two days old; keywords override."""
    return _make_outcome


@pytest.fixture(name="definitions")
def _definitions() -> Definitions:
    return parse_definitions(DEFINITIONS)


@pytest.fixture(name="topics")
def _topics() -> Topics:
    return Topics()


@pytest.fixture(name="publisher")
def _publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture(name="handler")
def _handler(definitions: Definitions, publisher: MemoryPublisher, topics: Topics) -> IngestHandler:
    return IngestHandler(
        definitions,
        publisher,
        topics,
        max_record_bytes=4096,
        dead_letter_max_bytes=2048,
        clock=lambda: NOW,
    )
