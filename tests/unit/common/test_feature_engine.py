"""The feature engine against a naive reference written from the documented semantics.

The reference (`reference_vector`, `reference_too_late`) keeps every event and
recomputes each feature from scratch, straight from README "Tiled windows" / "Event
time" and libs/common/definitions.py (FeatureSpec); it shares no code with the
engine. Issue 7: constant cost per event, event-time semantics, batch == sequential,
redelivery idempotence, bad input.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.definitions import FieldType, load_definitions, parse_definitions
from libs.common.features import codec
from libs.common.features.engine import (
    EventColumns,
    FeatureVector,
    States,
    apply,
    field_columns,
    vectors,
)
from libs.common.features.plan import ViewPlan

REPO = Path(__file__).resolve().parents[3]
LATENESS_S = 40.0
RETENTION_S = 150.0
ENTITIES = ("a", "b", "c")
# A key absent from a record (as opposed to present with a null value).
ABSENT = "<absent>"

DEFINITIONS = parse_definitions(
    {
        "sources": [
            {
                "name": "probe",
                "entity": "device",
                "allowed_lateness_s": LATENESS_S,
                "fields": {
                    "x": {"type": "float", "required": False},
                    "n": {"type": "int", "required": False},
                    "flag": {"type": "bool", "required": False},
                    "status": {"type": "str", "allowed": ["ok", "warn", "error"]},
                },
            }
        ],
        "feature_views": [
            {
                "name": "probe_stats",
                "source": "probe",
                "retention_s": RETENTION_S,
                "features": [
                    {"name": "x_last", "field": "x", "agg": "last"},
                    {"name": "x_last_30", "field": "x", "agg": "last", "window_s": 30},
                    {
                        "name": "x_since_100",
                        "field": "x",
                        "agg": "time_since_last",
                        "window_s": 100,
                    },
                    {
                        "name": "x_count_60",
                        "field": "x",
                        "agg": "count",
                        "window_s": 60,
                        "tiles": 6,
                    },
                    {"name": "x_sum_60", "field": "x", "agg": "sum", "window_s": 60, "tiles": 6},
                    {"name": "x_mean_60", "field": "x", "agg": "mean", "window_s": 60, "tiles": 6},
                    {"name": "x_min_60", "field": "x", "agg": "min", "window_s": 60, "tiles": 6},
                    {"name": "x_max_60", "field": "x", "agg": "max", "window_s": 60, "tiles": 6},
                    {"name": "x_std_60", "field": "x", "agg": "std", "window_s": 60, "tiles": 6},
                    {"name": "x_rate_60", "field": "x", "agg": "rate", "window_s": 60, "tiles": 6},
                    {
                        "name": "x_mean_120",
                        "field": "x",
                        "agg": "mean",
                        "window_s": 120,
                        "tiles": 4,
                    },
                    # 50 / 3 s tiles: boundaries that are not whole seconds.
                    {"name": "x_std_50", "field": "x", "agg": "std", "window_s": 50, "tiles": 3},
                    {"name": "x_count_all", "field": "x", "agg": "count"},
                    {"name": "n_max_45", "field": "n", "agg": "max", "window_s": 45, "tiles": 5},
                    {
                        "name": "n_is_2",
                        "field": "n",
                        "agg": "fraction",
                        "equals": 2,
                        "window_s": 45,
                        "tiles": 5,
                    },
                    {
                        "name": "flag_share",
                        "field": "flag",
                        "agg": "fraction",
                        "equals": True,
                        "window_s": 60,
                    },
                    {
                        "name": "error_share",
                        "field": "status",
                        "agg": "fraction",
                        "equals": "error",
                        "window_s": 60,
                        "tiles": 6,
                    },
                    {
                        "name": "ok_share",
                        "field": "status",
                        "agg": "fraction",
                        "equals": "ok",
                        "window_s": 60,
                        "tiles": 6,
                    },
                    {
                        "name": "status_count_90",
                        "field": "status",
                        "agg": "count",
                        "window_s": 90,
                        "tiles": 1,
                    },
                    {"name": "status_last_40", "field": "status", "agg": "last", "window_s": 40},
                    {"name": "status_since", "field": "status", "agg": "time_since_last"},
                ],
            }
        ],
        "models": [],
    }
)
SOURCE = DEFINITIONS.source("probe")
VIEW = DEFINITIONS.view("probe_stats")
PLAN = ViewPlan.of(VIEW, SOURCE)


@dataclass(frozen=True)
class Event:
    """One record as it arrives: entity index, event time, raw field values."""

    entity: int
    ts: float
    fields: dict[str, Any]


# Reference ---------------------------------------------------------------------------


def reference_too_late(events: Sequence[Event], lateness_s: float = LATENESS_S) -> list[bool]:
    """Too late: older than the newest event time of the entity's earlier arrivals by
    more than the allowed lateness (a rejected event is older, so it never raises it).
    """
    newest: dict[int, float] = {}
    out = []
    for e in events:
        before = newest.get(e.entity, -math.inf)
        out.append(e.ts < before - lateness_s)
        newest[e.entity] = max(before, e.ts)
    return out


def _value(raw: Any, kind: FieldType) -> float | str | None:
    """A raw field value as the documented rules read it (None = missing)."""
    if kind == FieldType.str:
        return raw if isinstance(raw, str) and raw != ABSENT else None
    if raw is None or isinstance(raw, str):
        return None
    number = float(raw)
    return number if math.isfinite(number) else None


def reference_vector(accepted: Sequence[Event]) -> FeatureVector | None:
    """Every feature of one entity as of its newest accepted event, from scratch."""
    if not accepted:
        return None
    as_of = max(e.ts for e in accepted)
    out: FeatureVector = {}
    for spec in VIEW.features:
        kind = SOURCE.fields[spec.field].type
        window = spec.window_s if spec.window_s is not None else VIEW.retention_s
        # (event time, arrival order, value) of the events holding a value of the field.
        held = [
            (e.ts, i, v)
            for i, e in enumerate(accepted)
            if (v := _value(e.fields.get(spec.field), kind)) is not None
        ]
        if spec.agg in ("last", "time_since_last"):
            newest = max(held, key=lambda h: (h[0], h[1]), default=None)
            if newest is None or newest[0] <= as_of - window:
                out[spec.name] = None
            elif spec.agg == "last":
                out[spec.name] = newest[2]
            else:
                out[spec.name] = as_of - newest[0]
            continue
        tile_s = window / spec.tiles
        current = math.floor(as_of / tile_s)
        values = [
            v for ts, _, v in held if current - spec.tiles < math.floor(ts / tile_s) <= current
        ]
        numbers = [float(v) for v in values if not isinstance(v, str)]
        count = len(values)
        if spec.agg == "count":
            out[spec.name] = float(count)
        elif spec.agg == "rate":
            out[spec.name] = count / window
        elif spec.agg == "sum":
            out[spec.name] = math.fsum(numbers)
        elif spec.agg == "mean":
            out[spec.name] = math.fsum(numbers) / count if count else None
        elif spec.agg == "min":
            out[spec.name] = min(numbers) if count else None
        elif spec.agg == "max":
            out[spec.name] = max(numbers) if count else None
        elif spec.agg == "std":
            out[spec.name] = statistics.stdev(numbers) if count >= 2 else None
        elif spec.agg == "fraction":
            assert spec.equals is not None
            target = str(spec.equals) if kind == FieldType.str else float(spec.equals)
            out[spec.name] = sum(v == target for v in values) / count if count else None
        else:
            raise AssertionError(f"reference lacks agg {spec.agg}")
    return out


def assert_vectors_match(got: FeatureVector | None, want: FeatureVector | None) -> None:
    """Same features, same missing values, floats equal to 1e-9 relative.

    A std is compared through its variance: the engine merges tiles by sum of squares,
    whose rounding error is absolute in the values' square (|x| <= 50 here), so a
    variance near zero is only exact to about 1e-12 * 2500.
    """
    if want is None or got is None:
        assert got == want
        return
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        if w is None or isinstance(w, str):
            assert g == w, name
            continue
        assert isinstance(g, float), (name, g, w)
        if name.startswith("x_std"):
            assert math.isclose(g * g, w * w, rel_tol=1e-9, abs_tol=1e-6), (name, g, w)
        else:
            assert math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-9), (name, g, w)


# Building batches ----------------------------------------------------------------------


def columns(events: Sequence[Event], first_offset: int = 0, *, partition: int = 0) -> EventColumns:
    """Events at consecutive offsets of one partition, in the given (arrival) order."""
    numeric, text, bad = field_columns(PLAN.field_types, [e.fields for e in events])
    assert not bad
    offsets = np.arange(first_offset, first_offset + len(events), dtype=np.int64)
    return EventColumns(
        entity=np.asarray([e.entity for e in events], dtype=np.int64),
        ts=np.asarray([e.ts for e in events], dtype=np.float64),
        seq=offsets.astype(np.float64),
        partition=np.full(len(events), partition, dtype=np.int64),
        offset=offsets,
        numeric=numeric,
        text=text,
    )


def apply_in_batches(
    events: Sequence[Event], cuts: Sequence[int]
) -> tuple[States, np.ndarray, np.ndarray]:
    """Fresh states after `events` applied in the batches `cuts` delimit; masks."""
    states = States.empty(PLAN, len(ENTITIES))
    cols = columns(events)
    too_late, duplicate = [], []
    bounds = [0, *sorted(set(cuts)), len(events)]
    for start, end in itertools.pairwise(bounds):
        applied = apply(PLAN, states, cols.take(np.arange(start, end)))
        too_late.append(applied.too_late)
        duplicate.append(applied.duplicate)
    return states, np.concatenate(too_late), np.concatenate(duplicate)


def encoded(states: States) -> list[bytes]:
    return codec.encode(PLAN, states)


def _number_field() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(-200, 200).map(lambda k: k / 4),
        st.sampled_from([ABSENT, None, math.nan, math.inf, -math.inf]),
    )


@st.composite
def histories(draw: st.DrawFn, max_size: int = 40) -> list[Event]:
    """Events of a few entities drifting forward in event time, some out of order, some
    later than the allowed lateness, with missing, null and non-finite values.
    """
    size = draw(st.integers(1, max_size))
    out = []
    for i in range(size):
        raw = {
            "x": draw(_number_field()),
            "n": draw(st.one_of(st.integers(-3, 3), st.sampled_from([ABSENT, None]))),
            "flag": draw(st.sampled_from([True, False, None, ABSENT])),
            "status": draw(st.sampled_from(["ok", "warn", "error", None, ABSENT])),
        }
        fields = {k: v for k, v in raw.items() if v != ABSENT}
        # Drifts forward 4 s an arrival; up to 120 s back (too late beyond 40 s).
        ts = 1_000_000.0 + 4 * i + draw(st.integers(-240, 20)) / 2
        out.append(Event(draw(st.integers(0, len(ENTITIES) - 1)), ts, fields))
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Event], list[int]]:
    events = draw(histories())
    cuts = draw(st.lists(st.integers(1, max(1, len(events) - 1)), max_size=6))
    return events, [c for c in cuts if c < len(events)]


# 1. Batches == reference == sequential ---------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(scenario=scenarios())
def test_batches_agree_with_reference_and_with_one_by_one(
    scenario: tuple[list[Event], list[int]],
) -> None:
    """Any batch split gives the reference's vectors and too-late verdicts, and the very
    state that applying the events one by one gives.
    """
    events, cuts = scenario
    batched, too_late, duplicate = apply_in_batches(events, cuts)
    one_by_one, too_late_1, _ = apply_in_batches(events, list(range(1, len(events))))

    want_late = reference_too_late(events)
    assert too_late.tolist() == want_late
    assert too_late_1.tolist() == want_late
    assert not duplicate.any()
    assert encoded(batched) == encoded(one_by_one)

    got = vectors(PLAN, batched)
    for e in range(len(ENTITIES)):
        accepted = [
            ev for ev, late in zip(events, want_late, strict=True) if ev.entity == e and not late
        ]
        assert_vectors_match(got[e], reference_vector(accepted))
        if accepted:
            assert batched.newest[e] == max(ev.ts for ev in accepted)


def test_reference_spot_check_of_tiled_window() -> None:
    """Hand-computed: a 60 s window of 10 s tiles as of t=1055 holds tiles 100..105,
    so an event at 999 (tile 99) is out, one at 1000 (tile 100) is in.
    """
    events = [
        Event(0, 999.0, {"x": 100.0, "status": "error"}),
        Event(0, 1000.0, {"x": 2.0, "status": "ok"}),
        Event(0, 1055.0, {"x": 4.0, "status": "error"}),
    ]
    states, _, _ = apply_in_batches(events, [])
    (vec, *_) = vectors(PLAN, states)
    assert vec is not None
    assert vec["x_count_60"] == 2.0
    assert vec["x_mean_60"] == 3.0
    assert vec["x_max_60"] == 4.0
    assert vec["x_rate_60"] == pytest.approx(2 / 60)
    assert vec["error_share"] == 0.5
    assert vec["x_last_30"] == 4.0 and vec["x_since_100"] == 0.0
    assert vec["x_count_all"] == 3.0
    assert vec == reference_vector(events)


def test_late_event_within_lateness_updates_its_tile_but_not_last() -> None:
    """An event 30 s older than the newest (lateness 40 s) is accepted: it counts in its
    window, but `last` keeps the newest event time's value.
    """
    events = [Event(0, 1050.0, {"x": 1.0}), Event(0, 1020.0, {"x": 9.0})]
    states, too_late, _ = apply_in_batches(events, [1])
    (vec, *_) = vectors(PLAN, states)
    assert vec is not None
    assert not too_late.any()
    assert vec["x_max_60"] == 9.0 and vec["x_count_60"] == 2.0
    assert vec["x_last"] == 1.0
    assert states.newest[0] == 1050.0


def test_too_late_event_changes_nothing() -> None:
    """An event older than the newest by more than the lateness is rejected and leaves
    the state as it was, except the Kafka position it was read at.
    """
    states, _, _ = apply_in_batches([Event(0, 1100.0, {"x": 1.0})], [])
    before = vectors(PLAN, states)
    applied = apply(PLAN, states, columns([Event(0, 1059.0, {"x": 50.0})], first_offset=1))
    assert applied.too_late.tolist() == [True]
    assert applied.newest_before.tolist() == [1100.0]
    assert vectors(PLAN, states) == before
    assert states.guard[0].tolist() == [0, 1]


def test_equal_event_times_keep_the_later_arrival_as_last() -> None:
    """Two values at the same event time: `last` is the one that arrived later, in a batch
    as when applied one by one.
    """
    events = [
        Event(0, 1000.0, {"x": 1.0, "status": "ok"}),
        Event(0, 1000.0, {"x": 2.0, "status": "warn"}),
    ]
    for cuts in ([], [1]):
        states, _, _ = apply_in_batches(events, cuts)
        (vec, *_) = vectors(PLAN, states)
        assert vec is not None
        assert (vec["x_last"], vec["status_last_40"]) == (2.0, "warn")


def test_entity_without_events_has_no_vector() -> None:
    """Rows of entities that never had an accepted event read as None, not as zeros."""
    states, _, _ = apply_in_batches([Event(1, 1000.0, {"x": 1.0})], [])
    got = vectors(PLAN, states)
    assert got[0] is None and got[2] is None and got[1] is not None


# 2. Redelivery ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(scenario=scenarios(), data=st.data())
def test_redelivered_positions_change_nothing(
    scenario: tuple[list[Event], list[int]], data: st.DataObject
) -> None:
    """Applying an already applied range again marks it all duplicate and leaves the state
    byte for byte; an overlapping range applies only the positions not applied yet.
    """
    events, cuts = scenario
    n = len(events)
    states, _, _ = apply_in_batches(events, cuts)
    once = encoded(states)

    # An already applied range, delivered again.
    start = data.draw(st.integers(0, n - 1))
    end = data.draw(st.integers(start + 1, n))
    again = apply(PLAN, states, columns(events).take(np.arange(start, end)))
    assert again.duplicate.all()
    assert not again.accepted.any() and not again.too_late.any()
    assert encoded(states) == once

    # A partial overlap: [0, k) then [i, n) with i < k.
    k = data.draw(st.integers(1, n))
    i = data.draw(st.integers(0, k - 1))
    cols = columns(events)
    overlap = States.empty(PLAN, len(ENTITIES))
    apply(PLAN, overlap, cols.take(np.arange(0, k)))
    second = apply(PLAN, overlap, cols.take(np.arange(i, n)))
    assert second.duplicate.tolist() == [True] * (k - i) + [False] * (n - k)
    assert encoded(overlap) == once


def test_redelivery_of_a_too_late_event_is_a_duplicate() -> None:
    """A too-late record delivered again is recognised by its position, so it is not
    judged (nor dead-lettered) a second time.
    """
    events = [Event(0, 1100.0, {"x": 1.0}), Event(0, 1000.0, {"x": 2.0})]
    states, too_late, _ = apply_in_batches(events, [])
    assert too_late.tolist() == [False, True]
    again = apply(PLAN, states, columns(events).take(np.arange(1, 2)))
    assert again.duplicate.tolist() == [True]


def test_another_partition_is_not_a_duplicate() -> None:
    """The guard compares offsets within a partition only: offset 0 of another partition
    is a new record.
    """
    states = States.empty(PLAN, len(ENTITIES))
    apply(PLAN, states, columns([Event(0, 1000.0, {"x": 1.0})], first_offset=5, partition=0))
    other = apply(PLAN, states, columns([Event(0, 1001.0, {"x": 3.0})], partition=1))
    assert other.accepted.tolist() == [True]
    (vec, *_) = vectors(PLAN, states)
    assert vec is not None and vec["x_count_60"] == 2.0


# 3. Constant cost ---------------------------------------------------------------------------


def _steady(count: int) -> list[Event]:
    """`count` events of entity 0, one every 10 s, ending on the same record."""
    out = [
        Event(
            0,
            1_000_000.0 + 10 * i,
            {
                "x": float(i % 7),
                "n": i % 3,
                "flag": i % 2 == 0,
                "status": ["ok", "warn", "error"][i % 3],
            },
        )
        for i in range(count - 1)
    ]
    out.append(Event(0, 1_000_000.0 + 10 * count, {"x": 1.0, "status": "warn"}))
    return out


def test_state_size_does_not_grow_with_history() -> None:
    """After 10,000 events (27 h of history) an entity's state is as many bytes as after
    10, and its vector still equals the reference's.
    """
    small, _, _ = apply_in_batches(_steady(10), [])
    history = _steady(10_000)
    large, _, _ = apply_in_batches(history, list(range(500, 10_000, 500)))
    small_bytes, large_bytes = encoded(small)[0], encoded(large)[0]
    assert len(large_bytes) == len(small_bytes)
    assert len(small_bytes) < 8 * codec.state_width(PLAN) + 64
    assert_vectors_match(vectors(PLAN, large)[0], reference_vector(history))


# 4. Codec -------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(scenario=scenarios())
def test_codec_round_trips_applied_states(scenario: tuple[list[Event], list[int]]) -> None:
    """decode(encode(s)) is s: every number, the categorical last values, the vectors;
    a missing value (None) decodes to an empty state.
    """
    events, cuts = scenario
    states, _, _ = apply_in_batches(events, cuts)
    blobs = encoded(states)
    back = codec.decode(PLAN, [None, *blobs])
    rows = np.arange(1, len(ENTITIES) + 1)
    again = back.take(rows)
    assert np.array_equal(again.newest, states.newest)
    assert np.array_equal(again.guard, states.guard)
    assert np.array_equal(again.last, states.last, equal_nan=True)
    assert again.last_text.tolist() == states.last_text.tolist()
    for mine, theirs in zip(again.tiles, states.tiles, strict=True):
        assert np.array_equal(mine, theirs, equal_nan=True)
    assert vectors(PLAN, again) == vectors(PLAN, states)
    assert encoded(again) == blobs
    assert vectors(PLAN, back)[0] is None and not back.has_events[0]


def test_codec_of_a_view_without_categorical_values_round_trips() -> None:
    """Views without a categorical `last` (signalops.yaml's) encode all rows in one
    buffer: each value is the fixed header and the row's numbers, and decodes back.
    """
    definitions = load_definitions(REPO / "signalops.yaml")
    view = definitions.feature_views[0]
    plan = ViewPlan.of(view, definitions.source(view.source))
    assert not plan.categorical_fields
    rng = np.random.default_rng(7)
    states = States.empty(plan, 4)
    states.newest[:] = rng.uniform(0, 1e9, 4)
    states.guard[:] = rng.integers(0, 1000, (4, 2))
    states.last[:] = rng.normal(size=states.last.shape)
    for ring in states.tiles:
        ring[:] = rng.normal(size=ring.shape)
    blobs = codec.encode(plan, states)
    width = codec.state_width(plan)
    assert [len(b) for b in blobs] == [6 + 8 * width] * 4
    assert all(b[:6] == b"S1\x00\x00\x00\x00" for b in blobs)
    back = codec.decode(plan, blobs)
    assert np.array_equal(back.newest, states.newest)
    assert np.array_equal(back.guard, states.guard)
    assert np.array_equal(back.last, states.last)
    for mine, theirs in zip(back.tiles, states.tiles, strict=True):
        assert np.array_equal(mine, theirs)


def test_categorical_last_value_survives_the_codec() -> None:
    """The str value of a `last` of a str field is carried in the value's header."""
    states, _, _ = apply_in_batches([Event(2, 1000.0, {"status": "error"})], [])
    back = codec.decode(PLAN, encoded(states))
    assert vectors(PLAN, back)[2] == vectors(PLAN, states)[2]
    assert vectors(PLAN, back)[2]["status_last_40"] == "error"  # type: ignore[index]


def test_value_of_another_layout_is_refused() -> None:
    """A state written by another plan (a changed view) or garbage raises ValueError
    instead of being misread.
    """
    narrow = parse_definitions(
        {
            "sources": [SOURCE.model_dump()],
            "feature_views": [
                {
                    "name": "probe_stats",
                    "source": "probe",
                    "features": [{"name": "x_mean", "field": "x", "agg": "mean", "window_s": 60}],
                }
            ],
            "models": [],
        }
    )
    other = ViewPlan.of(narrow.view("probe_stats"), SOURCE)
    assert other.fingerprint != PLAN.fingerprint
    states, _, _ = apply_in_batches([Event(0, 1000.0, {"x": 1.0})], [])
    with pytest.raises(ValueError, match="does not fit plan"):
        codec.decode(other, encoded(states)[:1])
    good = encoded(states)[0]
    for garbage in (b"", b"S1", b"XX" + good[2:], good[:-8], good + b"\0" * 8):
        with pytest.raises(ValueError):
            codec.decode(PLAN, [garbage])


# 5. field_columns -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ({}, None),
        ({"x": None}, None),
        ({"x": math.nan}, None),
        ({"x": math.inf}, None),
        ({"x": -math.inf}, None),
        ({"x": 2.5}, 2.5),
        ({"x": 3}, 3.0),
        ({"x": True}, 1.0),
        ({"x": False}, 0.0),
    ],
)
def test_numeric_field_values(raw: dict[str, Any], want: float | None) -> None:
    """Missing, null and non-finite are missing (NaN); ints and bools are numbers."""
    numeric, _, bad = field_columns({"x": FieldType.float}, [raw, {"x": 1.0}])
    assert not bad
    got = numeric["x"][0]
    assert (math.isnan(got) and want is None) or got == want
    assert numeric["x"][1] == 1.0


@pytest.mark.parametrize("value", ["hot", "21.5", "nan", "", "1e3"])
def test_str_in_numeric_field_is_a_bad_row(value: str) -> None:
    """A string in a numeric field rejects its record, even one that reads as a number;
    the other rows keep their values.
    """
    numeric, _, bad = field_columns(
        {"x": FieldType.float}, [{"x": 1.0}, {"x": value}, {"x": None}, {"x": 4}]
    )
    assert list(bad) == [1]
    assert "'x'" in bad[1] and "str" in bad[1] and "float" in bad[1]
    assert numeric["x"][0] == 1.0 and numeric["x"][3] == 4.0
    assert math.isnan(numeric["x"][2])


@pytest.mark.parametrize("value", [5, 2.5, True])
def test_number_in_str_field_is_a_bad_row(value: Any) -> None:
    """A non-str value in a str field rejects its record with the field and the type."""
    _, text, bad = field_columns({"s": FieldType.str}, [{"s": "ok"}, {"s": value}, {}])
    assert list(bad) == [1]
    assert "'s'" in bad[1] and type(value).__name__ in bad[1]
    assert text["s"].tolist() == ["ok", None, None]


def test_bad_rows_of_several_fields_are_all_named() -> None:
    """Each row breaking any field is reported once, with a reason."""
    _, _, bad = field_columns(
        {"x": FieldType.float, "s": FieldType.str},
        [{"x": "a", "s": "ok"}, {"x": 1.0, "s": 1}, {"x": 2.0, "s": "ok"}],
    )
    assert sorted(bad) == [0, 1]
    assert all(bad.values())
