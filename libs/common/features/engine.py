"""The incremental feature engine: per-entity tile state, updated a batch at a time.

One engine for both paths. The features service applies each consumed batch to the
states it loads from Redis and writes back; retraining and `signalops features
rebuild` replay the offline store through the same `apply` (libs/common/features/
replay.py). So a training row and a served vector of the same events are computed
by the same code (no training/serving skew by construction; a test proves it).

Applying a batch gives the same state as applying its events one by one in arrival
order, so where a batch ends never changes a result:

- an event whose Kafka position the state already holds is a redelivery and skipped
  (`duplicate`): the state records the last (partition, offset) applied;
- an event older than the entity's newest event (of earlier arrivals) by more than
  the source's allowed lateness is `too_late` (dead-lettered by the caller);
- every other event updates its tile in each group of its fields: a ring slot
  holding an older tile is reset first, an event of a tile older than its slot's is
  outside every window the entity can still be asked for and changes nothing;
- `last` keeps the value with the greatest (event time, arrival order).

Everything is numpy over the batch: no Python loop per event or per entity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from libs.common.definitions import FieldType
from libs.common.features.plan import (
    COUNT,
    MAX,
    MIN,
    SUM,
    SUMSQ,
    TILE,
    TILE_STATS,
    TileGroup,
    ViewPlan,
)

FeatureValue = float | str | None
FeatureVector = dict[str, FeatureValue]

# Columns of `States.last` per field.
LAST_TS, LAST_SEQ, LAST_NUM = range(3)


@dataclass
class EventColumns:
    """A batch of events of one source, columnar, in arrival order.

    Attributes:
        entity: row of each event's entity in the `States` it is applied to.
        ts: event time, epoch seconds.
        seq: arrival order (the Kafka offset, or any increasing number).
        partition, offset: Kafka position (-1 for events not from Kafka).
        numeric: field -> float64 values (NaN where missing) of numeric fields.
        text: field -> object values (None where missing) of str fields.
    """

    entity: np.ndarray
    ts: np.ndarray
    seq: np.ndarray
    partition: np.ndarray
    offset: np.ndarray
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    text: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, index: np.ndarray) -> EventColumns:
        return EventColumns(
            entity=self.entity[index],
            ts=self.ts[index],
            seq=self.seq[index],
            partition=self.partition[index],
            offset=self.offset[index],
            numeric={k: v[index] for k, v in self.numeric.items()},
            text={k: v[index] for k, v in self.text.items()},
        )


class FieldTypeMismatch(ValueError):
    """A field's value is not of the type its source declares (the record is rejected)."""


def field_columns(
    field_types: Mapping[str, FieldType], fields: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[int, str]]:
    """Numeric and text columns of `field_types`' fields, and the rows that break them.

    Rules (README, features): a missing field, a null and a non-finite number are a
    missing value (the other fields of the record still count); a value of the wrong
    type rejects the record (row index -> reason detail).
    """
    numeric: dict[str, np.ndarray] = {}
    text: dict[str, np.ndarray] = {}
    bad: dict[int, str] = {}
    for name, kind in field_types.items():
        raw = [f.get(name) for f in fields]
        if kind == FieldType.str:
            col = np.empty(len(raw), dtype=object)
            col[:] = raw
            for i, v in enumerate(raw):
                if v is not None and not isinstance(v, str):
                    bad[i] = f"field {name!r} is {type(v).__name__}, source declares str"
                    col[i] = None
            text[name] = col
            continue
        try:
            # numpy parses numeric strings ("21.5", "nan"): a str is of the wrong type
            # whatever it reads as, so any str takes the checked path.
            if any(isinstance(v, str) for v in raw):
                raise TypeError(name)
            arr = np.array(raw, dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.full(len(raw), np.nan)
            for i, v in enumerate(raw):
                if v is None:
                    continue
                if isinstance(v, bool | int | float):
                    arr[i] = float(v)
                else:
                    bad[i] = f"field {name!r} is {type(v).__name__}, source declares {kind}"
        arr[~np.isfinite(arr)] = np.nan
        numeric[name] = arr
    return numeric, text, bad


@dataclass
class States:
    """The streaming state of many entities of one view, one row per entity."""

    newest: np.ndarray  # (E,) newest accepted event time, -inf when none
    guard: np.ndarray  # (E, 2) int64: (partition, offset) last applied, -1 when none
    last: np.ndarray  # (E, F, 3): per last-value field (ts, seq, numeric value)
    last_text: np.ndarray  # (E, F) object: the str value of str last-value fields
    tiles: list[np.ndarray]  # per group (E, n, width)

    @classmethod
    def empty(cls, plan: ViewPlan, entities: int) -> States:
        f = len(plan.last_fields)
        last = np.zeros((entities, f, 3))
        last[:, :, LAST_TS] = -np.inf
        last[:, :, LAST_NUM] = np.nan
        return cls(
            newest=np.full(entities, -np.inf),
            guard=np.full((entities, 2), -1, dtype=np.int64),
            last=last,
            last_text=np.full((entities, f), None, dtype=object),
            tiles=[_empty_ring(g, entities) for g in plan.groups],
        )

    def __len__(self) -> int:
        return len(self.newest)

    def take(self, rows: np.ndarray) -> States:
        return States(
            newest=self.newest[rows],
            guard=self.guard[rows],
            last=self.last[rows],
            last_text=self.last_text[rows],
            tiles=[t[rows] for t in self.tiles],
        )

    def put(self, rows: np.ndarray, other: States) -> None:
        self.newest[rows] = other.newest
        self.guard[rows] = other.guard
        self.last[rows] = other.last
        self.last_text[rows] = other.last_text
        for mine, theirs in zip(self.tiles, other.tiles, strict=True):
            mine[rows] = theirs

    @classmethod
    def concat(cls, parts: Sequence[States]) -> States:
        return cls(
            newest=np.concatenate([p.newest for p in parts]),
            guard=np.concatenate([p.guard for p in parts]),
            last=np.concatenate([p.last for p in parts]),
            last_text=np.concatenate([p.last_text for p in parts]),
            tiles=[np.concatenate(ts) for ts in zip(*(p.tiles for p in parts), strict=True)],
        )

    @property
    def has_events(self) -> np.ndarray:
        return np.isfinite(self.newest)


def _empty_ring(group: TileGroup, entities: int) -> np.ndarray:
    ring = np.zeros((entities, group.n, group.width))
    ring[:, :, TILE] = -np.inf
    ring[:, :, MIN] = np.inf
    ring[:, :, MAX] = -np.inf
    return ring


@dataclass(frozen=True)
class Applied:
    """What `apply` did with each event of the batch (boolean masks, batch order)."""

    duplicate: np.ndarray
    too_late: np.ndarray
    accepted: np.ndarray
    # Per too-late event (batch order): the entity's newest time it was compared with.
    newest_before: np.ndarray


def apply(plan: ViewPlan, states: States, events: EventColumns) -> Applied:
    """Apply a batch (arrival order) to `states` in place (module docstring)."""
    n = len(events)
    if n == 0:
        empty = np.zeros(0, dtype=bool)
        return Applied(empty, empty, empty, np.zeros(0))
    ent = events.entity
    guard = states.guard[ent]
    duplicate = (
        (guard[:, 1] >= 0) & (events.partition == guard[:, 0]) & (events.offset <= guard[:, 1])
    )

    # Newest event time before each event: the state's, then earlier arrivals'.
    order = np.lexsort((np.arange(n), ent))
    ts_sorted = np.where(duplicate, -np.inf, events.ts)[order]
    ent_sorted = ent[order]
    running = pd.Series(ts_sorted).groupby(ent_sorted).cummax().to_numpy()
    first = np.r_[True, ent_sorted[1:] != ent_sorted[:-1]]
    before_sorted = np.where(first, -np.inf, np.r_[-np.inf, running[:-1]])
    before_sorted = np.maximum(before_sorted, states.newest[ent_sorted])
    newest_before = np.empty(n)
    newest_before[order] = before_sorted
    too_late = ~duplicate & (events.ts < newest_before - plan.lateness_s)
    accepted = ~duplicate & ~too_late

    np.maximum.at(states.newest, ent[accepted], events.ts[accepted])
    # The Kafka position of each entity's last processed event (accepted or too late).
    processed = order[~duplicate[order]]
    if len(processed):
        pe = ent[processed]
        last_of_entity = np.r_[pe[1:] != pe[:-1], True]
        rows = processed[last_of_entity]
        states.guard[ent[rows], 0] = events.partition[rows]
        states.guard[ent[rows], 1] = events.offset[rows]

    for g, group in enumerate(plan.groups):
        _apply_group(group, states.tiles[g], events, accepted)
    for j, name in enumerate(plan.last_fields):
        _apply_last(states, j, plan, name, events, accepted)
    return Applied(duplicate, too_late, accepted, newest_before)


def _present(events: EventColumns, name: str) -> tuple[np.ndarray, np.ndarray]:
    if name in events.text:
        values = events.text[name]
        return values, np.asarray([v is not None for v in values], dtype=bool)
    values = events.numeric[name]
    return values, ~np.isnan(values)


def _apply_group(
    group: TileGroup, ring3: np.ndarray, events: EventColumns, accepted: np.ndarray
) -> None:
    values, present = _present(events, group.field)
    mask = accepted & present
    if not mask.any():
        return
    entities, n, width = ring3.shape
    ring = ring3.reshape(entities * n, width)  # a view: updates land in ring3
    tile = np.floor(events.ts[mask] / group.tile_s)
    key = events.entity[mask] * n + np.mod(tile, n).astype(np.int64)
    newest = ring[:, TILE].copy()
    np.maximum.at(newest, key, tile)
    reset = newest > ring[:, TILE]
    if reset.any():
        ring[reset, :] = 0.0
        ring[reset, TILE] = newest[reset]
        ring[reset, MIN] = np.inf
        ring[reset, MAX] = -np.inf
    keep = tile == ring[key, TILE]
    k = key[keep]
    v = values[mask][keep]
    np.add.at(ring[:, COUNT], k, 1.0)
    if group.numeric:
        fv = v.astype(np.float64)
        np.add.at(ring[:, SUM], k, fv)
        np.add.at(ring[:, SUMSQ], k, fv * fv)
        np.minimum.at(ring[:, MIN], k, fv)
        np.maximum.at(ring[:, MAX], k, fv)
    for j, target in enumerate(group.equals):
        hit = np.equal(v, target) if not group.numeric else v.astype(np.float64) == target
        np.add.at(ring[:, TILE_STATS + j], k[hit], 1.0)


def _apply_last(
    states: States,
    j: int,
    plan: ViewPlan,
    name: str,
    events: EventColumns,
    accepted: np.ndarray,
) -> None:
    values, present = _present(events, name)
    idx = np.flatnonzero(accepted & present)
    if len(idx) == 0:
        return
    ent = events.entity[idx]
    order = np.lexsort((events.seq[idx], events.ts[idx], ent))
    ent_o = ent[order]
    newest = idx[order][np.r_[ent_o[1:] != ent_o[:-1], True]]  # per entity, greatest (ts, seq)
    e = events.entity[newest]
    ts, seq = events.ts[newest], events.seq[newest]
    cur_ts, cur_seq = states.last[e, j, LAST_TS], states.last[e, j, LAST_SEQ]
    wins = (ts > cur_ts) | ((ts == cur_ts) & (seq >= cur_seq))
    e, newest = e[wins], newest[wins]
    states.last[e, j, LAST_TS] = events.ts[newest]
    states.last[e, j, LAST_SEQ] = events.seq[newest]
    if plan.field_types[name] == FieldType.str:
        c = plan.categorical_fields.index(name)
        states.last_text[e, c] = values[newest]
    else:
        states.last[e, j, LAST_NUM] = values[newest]


# Reading vectors ------------------------------------------------------------------


def vector_columns(plan: ViewPlan, states: States) -> dict[str, np.ndarray]:
    """Every feature of every entity row as of the row's newest event, column-wise.

    Float columns hold NaN where a feature has no value; a categorical (`last` of a
    str field) column is object with None. Rows without any event are all missing.
    """
    as_of = states.newest
    out: dict[str, np.ndarray] = {}
    partials: dict[int, dict[str, np.ndarray]] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for fp in plan.features:
            spec = fp.spec
            if fp.group is not None:
                if fp.group not in partials:
                    partials[fp.group] = _window_partials(
                        plan.groups[fp.group], states.tiles[fp.group], as_of
                    )
                p = partials[fp.group]
                out[spec.name] = _tiled_value(plan.groups[fp.group], spec.agg, spec.equals, p, fp)
                continue
            assert fp.last is not None
            last_ts = states.last[:, fp.last, LAST_TS]
            inside = last_ts > as_of - fp.window_s
            if spec.agg == "time_since_last":
                out[spec.name] = np.where(inside, as_of - last_ts, np.nan)
            elif plan.field_types[spec.field] == FieldType.str:
                c = plan.categorical_fields.index(spec.field)
                col = states.last_text[:, c].copy()
                col[~inside] = None
                out[spec.name] = col
            else:
                out[spec.name] = np.where(inside, states.last[:, fp.last, LAST_NUM], np.nan)
    return out


def _window_partials(group: TileGroup, ring: np.ndarray, as_of: np.ndarray) -> dict[str, Any]:
    current = np.floor(as_of / group.tile_s)[:, None]
    tiles = ring[:, :, TILE]
    valid = (tiles > current - group.n) & (tiles <= current)
    count = np.where(valid, ring[:, :, COUNT], 0.0).sum(axis=1)
    out: dict[str, Any] = {"count": count, "valid": valid}
    if group.numeric:
        out["sum"] = np.where(valid, ring[:, :, SUM], 0.0).sum(axis=1)
        out["sumsq"] = np.where(valid, ring[:, :, SUMSQ], 0.0).sum(axis=1)
        out["min"] = np.where(valid, ring[:, :, MIN], np.inf).min(axis=1)
        out["max"] = np.where(valid, ring[:, :, MAX], -np.inf).max(axis=1)
    out["ring"] = ring
    return out


def _tiled_value(
    group: TileGroup, agg: str, equals: object, p: dict[str, Any], fp: Any
) -> np.ndarray:
    count = p["count"]
    some = count > 0
    if agg == "count":
        return count
    if agg == "rate":
        return count / fp.window_s
    if agg == "fraction":
        col = group.equals_column(equals)  # type: ignore[arg-type]
        hits = np.where(p["valid"], p["ring"][:, :, col], 0.0).sum(axis=1)
        return np.where(some, hits / count, np.nan)
    if agg == "sum":
        return p["sum"]
    if agg == "mean":
        return np.where(some, p["sum"] / count, np.nan)
    if agg == "min":
        return np.where(some, p["min"], np.nan)
    if agg == "max":
        return np.where(some, p["max"], np.nan)
    if agg == "std":
        mean = p["sum"] / count
        var = (p["sumsq"] - p["sum"] * mean) / (count - 1)
        # Sums of squares cancel: a window of equal values leaves rounding noise of
        # about mean^2 * 1e-13, which is no spread at all (and would differ between
        # two summation orders of the same values).
        var = np.where(var <= 1e-10 * mean * mean, 0.0, var)
        return np.where(count >= 2, np.sqrt(var), np.nan)
    raise ValueError(f"unknown tiled aggregation {agg!r}")


def vectors(plan: ViewPlan, states: States) -> list[FeatureVector | None]:
    """`vector_columns` as one dict per entity row; None for rows without events."""
    cols = vector_columns(plan, states)
    names = list(cols)
    # Whole columns to Python values at once (NaN -> None): a call per value was a
    # tenth of the features service's time (docs/benchmarks.md, "Features service").
    rows = zip(*(_values(cols[n]) for n in names), strict=True) if names else None
    out: list[FeatureVector | None] = []
    for has in states.has_events.tolist():
        row = next(rows) if rows is not None else ()
        out.append(dict(zip(names, row, strict=True)) if has else None)
    return out


def _values(col: np.ndarray) -> list[FeatureValue]:
    """A vector column as Python values: float or str, None where missing."""
    if col.dtype == object:
        return [_clean(v) for v in col.tolist()]
    obj = col.astype(np.float64).astype(object)
    obj[np.isnan(col)] = None
    return obj.tolist()  # type: ignore[no-any-return]  # floats and None


def _clean(v: Any) -> FeatureValue:
    if v is None or isinstance(v, str):
        return v
    f = float(v)
    return None if math.isnan(f) else f
