"""A batch of valid signals -> per-view state updates and vectors (pure).

Signals are split per source; each source's events become one columnar batch that
every view of the source applies to the states of the batch's entities
(libs/common/features/engine.py). Nothing here talks to Redis or Kafka: the handler
loads the states, calls `update_views`, and writes what it returns.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from libs.common.definitions import Definitions, FieldType, SourceDefinition
from libs.common.errors import RecordInvalid
from libs.common.features.engine import (
    Applied,
    EventColumns,
    FeatureVector,
    States,
    apply,
    field_columns,
    vectors,
)
from libs.common.features.plan import ViewPlan
from libs.common.schemas import Signal

FEATURE_TYPE_MISMATCH = "feature_type_mismatch"
TOO_LATE = "too_late"


@dataclass(slots=True)
class ValidSignal:
    """What the features path reads of a valid signal (times as epoch seconds).

    Built from a `Signal` (`of`) or straight from a record's bytes
    (services/features/decoding.py): the same values either way.
    """

    event_id: str
    source: str
    schema_version: int
    entity_id: str
    fields: dict[str, Any]
    ts: float  # event time
    arrival_ts: float  # when ingest accepted it (`ingested_at`), else `produced_at`
    # A polled source's cached snapshot re-emitted while the source is down (issue 9):
    # events already applied when first polled, so never applied again.
    stale: bool = False
    snapshot_ts: float | None = None  # a stale record's snapshot poll time

    @classmethod
    def of(cls, signal: Signal) -> ValidSignal:
        return cls(
            signal.event_id,
            signal.source,
            signal.schema_version,
            signal.entity_id,
            signal.fields,
            signal.event_time.timestamp(),
            (signal.ingested_at or signal.produced_at).timestamp(),
            signal.stale,
            None if signal.snapshot_at is None else signal.snapshot_at.timestamp(),
        )


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 1 us a record here
class Positioned:
    """A signal and where it was read from (its Kafka position is its arrival order)."""

    signal: ValidSignal
    topic: str
    partition: int
    offset: int


@dataclass
class SourceBatch:
    """The signals of one source in a consumed batch, in arrival order."""

    source: SourceDefinition
    plans: list[ViewPlan]
    records: list[Positioned]
    entities: list[str]  # distinct, first-seen order
    events: EventColumns


@dataclass(frozen=True)
class ViewUpdate:
    """One view's states after a batch, and the vectors they hold now."""

    plan: ViewPlan
    entities: list[str]
    states: States
    applied: Applied
    vectors: list[FeatureVector | None]


def source_staleness(
    records: Sequence[Positioned], polled: Collection[str]
) -> dict[str, float | None]:
    """Per polled source of the batch, the snapshot time when its last record (arrival
    order) is a stale re-emission, None when it is fresh: what serve reports (issue 9).
    """
    last: dict[str, float | None] = {}
    for r in records:
        s = r.signal
        if s.source in polled:
            last[s.source] = (s.snapshot_ts or s.arrival_ts) if s.stale else None
    return last


def plans_by_source(definitions: Definitions) -> dict[str, list[ViewPlan]]:
    out: dict[str, list[ViewPlan]] = {}
    for view in definitions.feature_views:
        out.setdefault(view.source, []).append(ViewPlan.of(view, definitions.source(view.source)))
    return out


def split_by_source(
    records: Sequence[Positioned],
    definitions: Definitions,
    plans: dict[str, list[ViewPlan]],
) -> tuple[list[SourceBatch], list[tuple[Positioned, RecordInvalid]]]:
    """Group by source; records this definitions file cannot place or whose field values
    break a feature (a value of another type than the source declares) are rejected.
    """
    by_source: dict[str, list[Positioned]] = {}
    rejected: list[tuple[Positioned, RecordInvalid]] = []
    for r in records:
        s = r.signal
        try:
            source = definitions.source(s.source)
        except KeyError:
            rejected.append((r, RecordInvalid("unknown_source", detail=f"{s.source!r}")))
            continue
        if s.schema_version != source.version:
            detail = f"{s.source} v{s.schema_version}, features know v{source.version}"
            rejected.append((r, RecordInvalid("schema_version_mismatch", detail=detail)))
            continue
        by_source.setdefault(s.source, []).append(r)

    batches: list[SourceBatch] = []
    for name, mine in by_source.items():
        source = definitions.source(name)
        views = plans.get(name, [])
        types: dict[str, FieldType] = {}
        for plan in views:
            types.update(plan.field_types)
        numeric, text, bad = field_columns(types, [r.signal.fields for r in mine])
        if bad:
            rejected.extend(
                (mine[i], RecordInvalid(FEATURE_TYPE_MISMATCH, detail=why))
                for i, why in bad.items()
            )
            keep = np.asarray([i not in bad for i in range(len(mine))])
            mine = [r for r, k in zip(mine, keep, strict=True) if k]
            numeric = {k: v[keep] for k, v in numeric.items()}
            text = {k: v[keep] for k, v in text.items()}
        if not mine:
            continue
        index: dict[str, int] = {}
        codes = np.fromiter(
            (index.setdefault(r.signal.entity_id, len(index)) for r in mine),
            dtype=np.int64,
            count=len(mine),
        )
        offsets = np.fromiter((r.offset for r in mine), dtype=np.int64, count=len(mine))
        events = EventColumns(
            entity=codes,
            ts=np.fromiter((r.signal.ts for r in mine), dtype=np.float64, count=len(mine)),
            seq=offsets.astype(np.float64),
            partition=np.fromiter((r.partition for r in mine), dtype=np.int64, count=len(mine)),
            offset=offsets,
            numeric=numeric,
            text=text,
        )
        batches.append(SourceBatch(source, views, mine, list(index), events))
    return batches, rejected


def update_views(batch: SourceBatch, loaded: Sequence[States]) -> list[ViewUpdate]:
    """Apply `batch` to each view's loaded states (one per plan, rows = batch.entities)."""
    out = []
    for plan, states in zip(batch.plans, loaded, strict=True):
        applied = apply(plan, states, batch.events)
        out.append(ViewUpdate(plan, batch.entities, states, applied, vectors(plan, states)))
    return out


def verdicts(batch: SourceBatch, updates: Sequence[ViewUpdate]) -> tuple[np.ndarray, np.ndarray]:
    """(kept, too_late) per record of `batch`.

    A record is too late (dead-lettered) when every view found it too late; it is
    kept for the offline store otherwise, so replaying the store through any view
    meets the same events that view met (a view rejects the same records again).
    A record every view already holds (a redelivery) is not written again: the
    offline file of its first delivery was written before the states were saved.
    """
    n = len(batch.records)
    if not updates:
        return np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    too_late = np.logical_and.reduce([u.applied.too_late for u in updates])
    duplicate = np.logical_and.reduce([u.applied.duplicate for u in updates])
    return ~too_late & ~duplicate, too_late
