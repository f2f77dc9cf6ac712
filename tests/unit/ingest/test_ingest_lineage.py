"""Ingest stamps every accepted signal with its own arrival time (issue 7)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from libs.common.definitions import Definitions
from libs.common.schemas import Signal
from services.ingest.core import validate_signal


def test_validate_signal_sets_ingested_at_to_now(
    make_signal: Callable[..., dict[str, Any]], definitions: Definitions, now: datetime
) -> None:
    """An accepted signal carries `ingested_at == now`, serialized as ISO 8601 with Z."""
    signal = validate_signal(make_signal(), definitions, now)
    assert signal.ingested_at == now
    assert json.loads(signal.to_bytes())["ingested_at"] == "2026-11-22T10:00:00Z"


def test_a_client_ingested_at_is_overridden_and_not_hashed(
    make_signal: Callable[..., dict[str, Any]], definitions: Definitions, now: datetime
) -> None:
    """A client's `ingested_at` (even an invalid one) is replaced, and the derived event
    id ignores it, so a resent record is still the same event."""
    plain = validate_signal(make_signal(), definitions, now)
    forged = validate_signal(make_signal(ingested_at="2000-01-01T00:00:00Z"), definitions, now)
    junk = validate_signal(make_signal(ingested_at="yesterday"), definitions, now)
    later = validate_signal(make_signal(), definitions, now + timedelta(seconds=30))
    assert forged.ingested_at == junk.ingested_at == now
    assert later.ingested_at == now + timedelta(seconds=30)
    assert plain.event_id == forged.event_id == junk.event_id == later.event_id


def test_ingested_at_is_optional_and_round_trips() -> None:
    """A signal without `ingested_at` serializes it as null; with it, it survives bytes."""
    bare = Signal(source="s", entity_id="e", fields={})
    assert json.loads(bare.to_bytes())["ingested_at"] is None
    assert Signal.from_bytes(bare.to_bytes()).ingested_at is None
    stamped = bare.model_copy(update={"ingested_at": bare.produced_at})
    assert Signal.from_bytes(stamped.to_bytes()).ingested_at == bare.produced_at
