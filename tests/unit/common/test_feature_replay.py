"""Replay == streaming: what training reads back is what the online store held.

Events are streamed in batches through `engine.apply` as the features service does,
with vectors snapshotted after each batch; `replay.vectors_at` over the accepted
events (the offline store's rows) must give the same vectors at the same times, and
`replay.final_states` the final ones (issue 7: no training/serving skew).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any
from unittest.mock import patch

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.definitions import parse_definitions
from libs.common.features import replay
from libs.common.features.engine import (
    EventColumns,
    FeatureVector,
    States,
    apply,
    field_columns,
    vectors,
)
from libs.common.features.plan import ViewPlan

ENTITIES = ("a", "b", "c", "d")
PARTITIONS = 2

DEFINITIONS = parse_definitions(
    {
        "sources": [
            {
                "name": "probe",
                "entity": "device",
                "allowed_lateness_s": 30,
                "fields": {
                    "x": {"type": "float", "required": False},
                    "status": {"type": "str", "required": False},
                },
            }
        ],
        "feature_views": [
            {
                "name": "probe_stats",
                "source": "probe",
                "retention_s": 200,
                "features": [
                    {"name": "x_last", "field": "x", "agg": "last"},
                    {"name": "x_mean_60", "field": "x", "agg": "mean", "window_s": 60, "tiles": 6},
                    {"name": "x_max_60", "field": "x", "agg": "max", "window_s": 60, "tiles": 6},
                    {"name": "x_std_40", "field": "x", "agg": "std", "window_s": 40, "tiles": 4},
                    {"name": "x_count", "field": "x", "agg": "count"},
                    {"name": "x_since", "field": "x", "agg": "time_since_last", "window_s": 50},
                    {
                        "name": "error_share",
                        "field": "status",
                        "agg": "fraction",
                        "equals": "error",
                        "window_s": 60,
                    },
                    {"name": "status_last", "field": "status", "agg": "last", "window_s": 45},
                ],
            }
        ],
        "models": [],
    }
)
PLAN = ViewPlan.of(DEFINITIONS.view("probe_stats"), DEFINITIONS.source("probe"))
NAMES = [f.spec.name for f in PLAN.features]


@dataclass(frozen=True)
class Record:
    """A consumed record: entity index, event time, ingest time, Kafka position."""

    entity: int
    ts: float
    arrival: float
    partition: int
    offset: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    """Entity `entity`'s online vector right after the batch that ended at `at`."""

    entity: int
    at: float
    vector: FeatureVector | None
    as_of: float


def _columns(records: list[Record]) -> EventColumns:
    numeric, text, bad = field_columns(PLAN.field_types, [r.fields for r in records])
    assert not bad
    offsets = np.asarray([r.offset for r in records], dtype=np.int64)
    return EventColumns(
        entity=np.asarray([r.entity for r in records], dtype=np.int64),
        ts=np.asarray([r.ts for r in records], dtype=np.float64),
        seq=offsets.astype(np.float64),
        partition=np.asarray([r.partition for r in records], dtype=np.int64),
        offset=offsets,
        numeric=numeric,
        text=text,
    )


def stream(batches: list[list[Record]]) -> tuple[States, list[Record], list[Snapshot]]:
    """Apply each batch as the service does; the accepted records and, after each batch,
    every entity's vector (queried at the batch's newest arrival + 1 ms).
    """
    states = States.empty(PLAN, len(ENTITIES))
    accepted: list[Record] = []
    snapshots = []
    for batch in batches:
        applied = apply(PLAN, states, _columns(batch))
        accepted.extend(r for r, ok in zip(batch, applied.accepted, strict=True) if ok)
        at = max(r.arrival for r in batch) + 0.001
        for e, vec in enumerate(vectors(PLAN, states)):
            snapshots.append(Snapshot(e, at, vec, float(states.newest[e])))
    return states, accepted, snapshots


def events_frame(records: list[Record]) -> pd.DataFrame:
    """The offline store's signal rows of `records` (fields as JSON)."""
    return pd.DataFrame(
        {
            replay.ENTITY: [ENTITIES[r.entity] for r in records],
            replay.TS: [r.ts for r in records],
            replay.ARRIVAL: [r.arrival for r in records],
            replay.PARTITION: [r.partition for r in records],
            replay.OFFSET: [r.offset for r in records],
            replay.FIELDS_JSON: [json.dumps(r.fields) for r in records],
        }
    )


def row_vector(row: pd.Series) -> FeatureVector:
    """A `vectors_at` row as the dict `engine.vectors` gives (NaN -> None)."""
    out: FeatureVector = {}
    for name in NAMES:
        v = row[name]
        if v is None or isinstance(v, str):
            out[name] = v
        else:
            out[name] = None if math.isnan(v) else float(v)
    return out


@st.composite
def recorded_batches(draw: st.DrawFn) -> list[list[Record]]:
    """Consumed batches: entities keyed to partitions, offsets rising per partition,
    event times out of order (some too late), ingest times out of Kafka order within a
    batch, missing values.
    """
    count = draw(st.integers(1, 8))
    next_offset = [0] * PARTITIONS
    batches = []
    step = 0
    for k in range(count):
        batch = []
        for _ in range(draw(st.integers(1, 6))):
            e = draw(st.integers(0, len(ENTITIES) - 1))
            p = e % PARTITIONS
            x = draw(st.one_of(st.integers(-40, 40).map(lambda v: v / 2), st.none()))
            status = draw(st.sampled_from(["ok", "error", None]))
            fields = {k: v for k, v in {"x": x, "status": status}.items() if v is not None}
            step += 1
            batch.append(
                Record(
                    entity=e,
                    ts=10_000.0 + 5 * step + draw(st.integers(-80, 10)),
                    # Batch k arrived within [10k, 10k + 5): in any order inside it.
                    arrival=10.0 * k + draw(st.integers(0, 49)) / 10,
                    partition=p,
                    offset=next_offset[p],
                    fields=fields,
                )
            )
            next_offset[p] += 1
        batches.append(batch)
    return batches


@settings(max_examples=60, deadline=None)
@given(batches=recorded_batches())
def test_vectors_at_equals_streaming_snapshots(batches: list[list[Record]]) -> None:
    """At each batch end, vectors_at over the accepted records gives exactly the vector
    (and as_of) the stream held; before any arrival it gives no vector.
    """
    _, accepted, snapshots = stream(batches)
    queries = pd.DataFrame(
        {
            replay.ENTITY: [ENTITIES[s.entity] for s in snapshots] + list(ENTITIES),
            replay.AT: [s.at for s in snapshots] + [-1.0] * len(ENTITIES),
        },
        index=pd.RangeIndex(100, 100 + len(snapshots) + len(ENTITIES)),
    )
    # Small chunks, so entities are replayed in several groups.
    with patch.object(replay, "ENTITIES_PER_CHUNK", 2):
        got = replay.vectors_at(PLAN, events_frame(accepted), queries)
    assert got.index.equals(queries.index)
    for (_, row), snap in zip(got.iterrows(), snapshots, strict=False):
        if snap.vector is None:
            assert math.isnan(row[replay.AS_OF])
            assert all(v is None for v in row_vector(row).values())
            continue
        assert row_vector(row) == snap.vector
        assert row[replay.AS_OF] == snap.as_of
    assert got[replay.AS_OF].iloc[len(snapshots) :].isna().all()


@settings(max_examples=40, deadline=None)
@given(batches=recorded_batches())
def test_final_states_equal_streamed_states(batches: list[list[Record]]) -> None:
    """Replaying the accepted records to the end gives each entity the vector the stream
    ends with; the too-late records the service kept out change nothing.
    """
    states, accepted, _ = stream(batches)
    want = dict(zip(ENTITIES, vectors(PLAN, states), strict=True))
    got: dict[str, FeatureVector | None] = {}
    newest: dict[str, float] = {}
    with patch.object(replay, "ENTITIES_PER_CHUNK", 3):
        for ids, replayed in replay.final_states(PLAN, events_frame(accepted)):
            got.update(zip(ids, vectors(PLAN, replayed), strict=True))
            newest.update(zip(ids, replayed.newest.tolist(), strict=True))
    assert got == {k: v for k, v in want.items() if v is not None}
    assert newest == {
        ENTITIES[e]: float(states.newest[e]) for e in range(len(ENTITIES)) if ENTITIES[e] in got
    }


def test_event_is_invisible_until_it_arrived() -> None:
    """An event is online from its ingest time, not its event time: queried between the
    two it is not there yet.
    """
    records = [Record(0, 100.0, 500.0, 0, 0, {"x": 1.0})]
    queries = pd.DataFrame({replay.ENTITY: ["a", "a"], replay.AT: [300.0, 500.0]})
    got = replay.vectors_at(PLAN, events_frame(records), queries)
    assert math.isnan(got[replay.AS_OF].iloc[0])
    assert got[replay.AS_OF].iloc[1] == 100.0
    assert got["x_last"].iloc[1] == 1.0


def test_visibility_is_a_prefix_of_kafka_order() -> None:
    """Ingest times out of Kafka order: a record is visible only once every record before
    it in its partition has arrived too (the service applied them in that order).
    """
    records = [
        Record(0, 100.0, 10.0, 0, 0, {"x": 1.0}),
        Record(0, 101.0, 5.0, 0, 1, {"x": 3.0}),
    ]
    queries = pd.DataFrame({replay.ENTITY: ["a", "a", "a"], replay.AT: [4.0, 7.0, 10.0]})
    got = replay.vectors_at(PLAN, events_frame(records), queries)
    assert got[replay.AS_OF].isna().tolist() == [True, True, False]
    assert got["x_count"].iloc[2] == 2.0
    assert got["x_last"].iloc[2] == 3.0


def test_too_late_rows_left_in_the_frame_are_rejected_again() -> None:
    """A replay that meets a record the service found too late rejects it the same way,
    so its vector is the one streamed without it.
    """
    records = [
        Record(0, 1000.0, 1.0, 0, 0, {"x": 1.0}),
        Record(0, 900.0, 2.0, 0, 1, {"x": 99.0}),
    ]
    states, accepted, _ = stream([records])
    assert len(accepted) == 1
    ((ids, replayed),) = list(replay.final_states(PLAN, events_frame(records)))
    assert ids == ["a"]
    assert vectors(PLAN, replayed)[0] == vectors(PLAN, states)[0]
