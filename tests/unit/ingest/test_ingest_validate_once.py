"""validate_signal builds each signal once (issue 9's profile): same ids, same signal;
Signal.to_bytes writes what pydantic wrote.

The ids below were computed by the code before this change (HEAD 5a176a7); a signal's id
is its dedup key downstream, so it must not move for the same content.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.definitions import Definitions
from libs.common.errors import RecordInvalid
from libs.common.schemas import Signal
from libs.common.schemas.base import stable_id
from services.ingest.core.validation import validate_signal
from tests.unit.ingest.test_ingest_properties import signal_like, valid_sensors

SignalFactory = Callable[..., dict[str, Any]]


@pytest.mark.parametrize(
    ("overrides", "event_id"),
    [
        ({}, "405187864e10bf3d92861441bfe0a2a2"),
        # The same instant written with an offset: the same id.
        ({"event_time": "2026-11-22T10:59:55+01:00"}, "405187864e10bf3d92861441bfe0a2a2"),
        # Hashed after the unknown field is dropped and the int converted to a float.
        (
            {"fields": {"temperature": 21, "status": "ok", "x": [1]}},
            "a97cbfb52a95f36b9593588668e0463d",
        ),
        (
            {
                "entity_id": "dévice-é",
                "fields": {
                    "temperature": -3.25e1,
                    "status": "warn",
                    "count": 7,
                    "active": True,
                    "note": "ü",
                },
            },
            "7ee0433c5f487d1d9c7355fbb8572961",
        ),
    ],
)
def test_content_ids_are_unchanged(
    overrides: dict[str, Any],
    event_id: str,
    make_signal: SignalFactory,
    definitions: Definitions,
    now: datetime,
) -> None:
    assert validate_signal(make_signal(**overrides), definitions, now).event_id == event_id


def test_stable_id_text_is_json_dumps() -> None:
    # The cached encoder must hash exactly what json.dumps wrote.
    assert stable_id("a", 1, 2.5, {"b": [None, True], "a": "é"}) == (
        "68c4687c7e5340e6c5f9c56c1506f18d"
    )


PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _validated_whole(record: dict[str, Any], signal: Signal) -> Signal:
    """What validate_signal returned before issue 9's change: the whole record, with the
    checked fields and ingest's lineage, through pydantic (which derives the id)."""
    data = {
        **record,
        "ingested_at": signal.ingested_at,
        "stale": False,
        "snapshot_at": None,
        "late": signal.late,
        "ingest_version": signal.ingest_version,
        "fields": signal.fields,
    }
    if "produced_at" not in record:
        data["produced_at"] = signal.produced_at  # a default: the time it was built
    return Signal.model_validate(data)


@PROPERTY
@given(record=valid_sensors | signal_like)
def test_built_once_equals_validated_whole(
    record: dict[str, Any], definitions: Definitions, now: datetime
) -> None:
    try:
        signal = validate_signal(record, definitions, now, ingest_version="1.2.3")
    except RecordInvalid:
        return  # rejections come from checks this change left as they were
    whole = _validated_whole(record, signal)
    assert signal == whole
    pinned = set() if "produced_at" in record else {"produced_at"}  # set above, a default
    assert signal.model_fields_set == whole.model_fields_set - pinned
    assert signal.to_bytes() == whole.to_bytes()
    assert type(signal.fields) is dict and signal.fields is not record["fields"]


aware_times = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=1)), timezone(-timedelta(hours=7, minutes=30))]
    ),
)
field_value = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)


@PROPERTY
@given(
    source=st.text(min_size=1, max_size=64),
    entity_id=st.text(min_size=1, max_size=256),
    event_time=aware_times,
    produced_at=aware_times,
    fields=st.dictionaries(st.text(max_size=10), field_value, max_size=6),
    ingested_at=st.none() | aware_times,
    snapshot_at=st.none() | aware_times,
    flags=st.tuples(st.booleans(), st.booleans()),
    ingest_version=st.none() | st.text(max_size=64),
)
def test_signal_bytes_are_pydantics(
    source: str,
    entity_id: str,
    event_time: datetime,
    produced_at: datetime,
    fields: dict[str, Any],
    ingested_at: datetime | None,
    snapshot_at: datetime | None,
    flags: tuple[bool, bool],
    ingest_version: str | None,
) -> None:
    signal = Signal(
        source=source,
        entity_id=entity_id,
        event_time=event_time,
        produced_at=produced_at,
        fields=fields,
        ingested_at=ingested_at,
        snapshot_at=snapshot_at,
        stale=flags[0],
        late=flags[1],
        ingest_version=ingest_version,
    )
    assert signal.to_bytes() == signal.model_dump_json().encode()


def test_signal_bytes_name_every_field_in_order(make_signal: SignalFactory) -> None:
    # A field added to Signal must be added to its to_bytes too.
    signal = Signal.model_validate(make_signal())
    assert list(json.loads(signal.to_bytes())) == list(Signal.model_fields)


def test_signal_bytes_fall_back_to_pydantic_beyond_64_bits(make_signal: SignalFactory) -> None:
    signal = Signal.model_validate(make_signal(fields={"n": 2**70}))
    assert signal.to_bytes() == signal.model_dump_json().encode()
    assert json.loads(signal.to_bytes())["fields"]["n"] == 2**70
