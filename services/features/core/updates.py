"""Turning a batch of valid signals into feature-vector updates (pure).

Signals are grouped per (source, entity) so each entity's history is read and
written once per batch; vectors are computed as of the entity's newest event, which
makes the result a function of the events alone: replays give the same state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from libs.common.definitions import Definitions, FeatureView, SourceDefinition
from libs.common.errors import RecordInvalid
from libs.common.features import EventHistory, FeatureVector, compute_view
from libs.common.schemas import Signal


@dataclass
class EntityBatch:
    """The new signals of one entity from one source."""

    source: SourceDefinition
    entity_id: str
    signals: list[Signal] = field(default_factory=list)


@dataclass(frozen=True)
class VectorComputed:
    """A fact: the view's features for the entity as of `as_of`."""

    view: FeatureView
    entity_id: str
    values: FeatureVector
    as_of: float


def group_signals(
    signals: Iterable[Signal], definitions: Definitions
) -> tuple[list[EntityBatch], list[tuple[Signal, RecordInvalid]]]:
    """Group by (source, entity); signals this definitions file cannot place are rejected."""
    groups: dict[tuple[str, str], EntityBatch] = {}
    rejected: list[tuple[Signal, RecordInvalid]] = []
    for s in signals:
        try:
            source = definitions.source(s.source)
        except KeyError:
            rejected.append((s, RecordInvalid("unknown_source", detail=f"{s.source!r}")))
            continue
        if s.schema_version != source.version:
            rejected.append(
                (
                    s,
                    RecordInvalid(
                        "schema_version_mismatch",
                        detail=f"{s.source} v{s.schema_version}, features know v{source.version}",
                    ),
                )
            )
            continue
        key = (s.source, s.entity_id)
        if key not in groups:
            groups[key] = EntityBatch(source, s.entity_id)
        groups[key].signals.append(s)
    return list(groups.values()), rejected


def compute_vectors(
    views: Sequence[FeatureView], entity_id: str, history: EventHistory
) -> list[VectorComputed]:
    """Every view's vector as of the entity's newest event."""
    if not history.times:
        return []
    as_of = history.times[-1]
    return [
        VectorComputed(view, entity_id, compute_view(view, history, as_of), as_of) for view in views
    ]


def by_source(definitions: Definitions) -> dict[str, list[FeatureView]]:
    out: dict[str, list[FeatureView]] = defaultdict(list)
    for v in definitions.feature_views:
        out[v.source].append(v)
    return dict(out)
