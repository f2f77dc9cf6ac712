"""Replaying recorded events through the engine: what the online store held, when.

Training asks, per label, for the vector serve could read at the prediction's time;
`signalops features rebuild` asks for the final state of every entity. Both replay
the offline store's rows of one source through `engine.apply`, the code the
features service runs, in the order the service applied them: per entity by Kafka
position (partition, offset), rows not from Kafka by arrival time.

An event is visible at time t when it had arrived (at ingest) by t; since arrival
times can disagree slightly with Kafka order, an entity's events are visible as a
prefix of that order: up to the last one whose running maximum arrival time is <= t.

Vectorised: each entity's events are cut at the points its queries need, and round
r applies the r-th segment of every entity at once, so the Python loop runs once per
query of the busiest entity, never once per label or per event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from libs.common.features.engine import (
    EventColumns,
    States,
    apply,
    field_columns,
    vector_columns,
)
from libs.common.features.plan import ViewPlan

ENTITY = "entity_id"
TS = "ts"
ARRIVAL = "arrival_ts"
PARTITION = "partition"
OFFSET = "offset"
FIELDS_JSON = "fields_json"
AT = "at"
AS_OF = "as_of"

# Entities replayed together: bounds the memory of their states (about 2.5 KB each
# for the demo's view).
ENTITIES_PER_CHUNK = 50_000


def arrival_order(events: pd.DataFrame) -> pd.DataFrame:
    """`events` sorted as the features service applied them, per entity."""
    cols = {ENTITY, TS, ARRIVAL, PARTITION, OFFSET, FIELDS_JSON}
    missing = cols - set(events.columns)
    if missing:
        raise ValueError(f"events lack columns {sorted(missing)}")
    return events.sort_values(
        [ENTITY, PARTITION, OFFSET, ARRIVAL, TS], kind="stable", ignore_index=True
    )


def _columns(plan: ViewPlan, events: pd.DataFrame, entity_codes: np.ndarray) -> EventColumns:
    fields: list[dict[str, Any]] = [json.loads(s) for s in events[FIELDS_JSON].to_numpy()]
    numeric, text, _bad = field_columns(
        plan.field_types, fields
    )  # the service wrote only good rows
    offset = events[OFFSET].to_numpy(dtype=np.int64)
    return EventColumns(
        entity=entity_codes,
        ts=events[TS].to_numpy(dtype=np.float64),
        # Arrival order within an entity (offsets for Kafka rows, row order otherwise).
        seq=np.where(offset >= 0, offset, np.arange(len(events))).astype(np.float64),
        partition=events[PARTITION].to_numpy(dtype=np.int64),
        offset=offset,
        numeric=numeric,
        text=text,
    )


def _chunks(
    ordered: pd.DataFrame, entities: np.ndarray
) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """(entity ids, their events) per chunk of `ENTITIES_PER_CHUNK` entities."""
    for start in range(0, len(entities), ENTITIES_PER_CHUNK):
        ids = entities[start : start + ENTITIES_PER_CHUNK]
        yield ids, ordered[ordered[ENTITY].isin(ids)]


def final_states(plan: ViewPlan, events: pd.DataFrame) -> Iterator[tuple[list[str], States]]:
    """The state of every entity after all of `events`, a chunk of entities at a time."""
    ordered = arrival_order(events)
    for ids, part in _chunks(ordered, ordered[ENTITY].unique()):
        codes = pd.Categorical(part[ENTITY], categories=ids).codes.astype(np.int64)
        states = States.empty(plan, len(ids))
        apply(plan, states, _columns(plan, part.reset_index(drop=True), codes))
        yield [str(i) for i in ids], states


def vectors_at(plan: ViewPlan, events: pd.DataFrame, queries: pd.DataFrame) -> pd.DataFrame:
    """The vector each query's entity had online at the query's time.

    Args:
        plan: the view.
        events: offline-store signal rows of the view's source (entity_id, ts,
            arrival_ts, partition, offset, fields_json).
        queries: (entity_id, at) rows; `at` is epoch seconds.

    Returns:
        A frame aligned with `queries` (same index): one column per feature and
        `as_of` (the vector's event time); NaN / None and `as_of` NaN where the
        entity had no visible event yet (no vector online).
    """
    names = [f.spec.name for f in plan.features]
    out = pd.DataFrame(index=queries.index)
    for fp in plan.features:
        categorical = (
            fp.group is None and fp.spec.agg == "last" and fp.spec.field in plan.categorical_fields
        )
        out[fp.spec.name] = pd.Series(
            None if categorical else np.nan,
            index=queries.index,
            dtype=object if categorical else "float64",
        )
    out[AS_OF] = np.nan
    if queries.empty or events.empty:
        return out
    ordered = arrival_order(events[events[ENTITY].isin(queries[ENTITY].unique())])
    if ordered.empty:
        return out
    for ids, part in _chunks(ordered, ordered[ENTITY].unique()):
        part = part.reset_index(drop=True)
        mine = queries[queries[ENTITY].isin(ids)]
        if mine.empty:
            continue
        _replay_chunk(plan, ids, part, mine, out, names)
    return out


def _replay_chunk(
    plan: ViewPlan,
    ids: np.ndarray,
    part: pd.DataFrame,
    queries: pd.DataFrame,
    out: pd.DataFrame,
    names: list[str],
) -> None:
    codes = pd.Categorical(part[ENTITY], categories=ids).codes.astype(np.int64)
    n = len(part)
    position = np.arange(n)
    visible_from = part.groupby(codes)[ARRIVAL].cummax().to_numpy(dtype=np.float64)

    # The last visible event of each query: merge_asof on the running arrival time.
    left = pd.DataFrame(
        {
            "q": np.arange(len(queries)),
            "code": pd.Categorical(queries[ENTITY], categories=ids).codes.astype(np.int64),
            AT: queries[AT].to_numpy(dtype=np.float64),
        }
    ).sort_values(AT, kind="stable")
    right = pd.DataFrame({"code": codes, AT: visible_from, "cut": position}).sort_values(
        AT, kind="stable"
    )
    # Ties in visible time: the latest position is the prefix's end.
    right = right.sort_values([AT, "cut"], kind="stable")
    joined = pd.merge_asof(left, right, on=AT, by="code", direction="backward")
    joined = joined.sort_values("q")
    cut_of_query = joined["cut"].to_numpy()
    has_cut = ~np.isnan(cut_of_query)
    if not has_cut.any():
        return

    cuts = np.unique(cut_of_query[has_cut].astype(np.int64))  # global positions, sorted
    cut_code = codes[cuts]
    # Rank of each cut among its entity's cuts = the round that ends at it.
    first_of_entity = np.r_[True, cut_code[1:] != cut_code[:-1]]
    group_start = np.maximum.accumulate(np.where(first_of_entity, np.arange(len(cuts)), 0))
    round_of_cut = np.arange(len(cuts)) - group_start
    # Each event belongs to the first cut at or after it (if that cut is its entity's).
    nxt = np.searchsorted(cuts, position, side="left")
    inside = nxt < len(cuts)
    inside[inside] = cut_code[nxt[inside]] == codes[inside]
    round_of_event = np.full(n, -1)
    round_of_event[inside] = round_of_cut[nxt[inside]]

    columns = _columns(plan, part, codes)
    states = States.empty(plan, len(ids))
    query_rows = np.flatnonzero(has_cut)
    query_cut = cut_of_query[has_cut].astype(np.int64)
    values: dict[str, np.ndarray] = {
        name: np.empty(len(queries), dtype=out[name].dtype) for name in names
    }
    for name in names:
        values[name][:] = None if values[name].dtype == object else np.nan
    as_of = np.full(len(queries), np.nan)
    for r in range(int(round_of_cut.max()) + 1):
        apply(plan, states, columns.take(np.flatnonzero(round_of_event == r)))
        ended = cuts[round_of_cut == r]
        entities = codes[ended]
        cols = vector_columns(plan, states.take(entities))
        # Queries whose cut ended in this round read their entity's row.
        ask = np.isin(query_cut, ended)
        rows = query_rows[ask]
        where = np.searchsorted(ended, query_cut[ask])
        for name in names:
            values[name][rows] = cols[name][where]
        as_of[rows] = states.newest[entities][where]
    index = queries.index
    for name in names:
        out.loc[index, name] = values[name]
    out.loc[index, AS_OF] = as_of
