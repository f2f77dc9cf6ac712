"""A feature view compiled into the layout of its per-entity streaming state.

The state of one entity for one view is a fixed number of numbers, whatever the
entity's history (issue 7: the cost of an event must not grow with history):

- per tile group (one field at one tile size): a ring of `n` tiles, each holding
  its tile number and the mergeable partial aggregates of the values that fell in
  it: count, sum, sum of squares, min, max and one count per `equals` value;
- per field read by `last` or `time_since_last`: the newest value, its event time
  and its arrival order (a tie in event time goes to the later arrival);
- the entity's newest event time and the Kafka position last applied.

A window of `window_s` cut into `tiles` tiles is read as the `tiles` newest tile
numbers up to the vector's as-of time, so it spans between `window_s - tile_s` and
`window_s` seconds (libs/common/definitions.py, FeatureSpec).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

from libs.common.definitions import (
    TILED_AGGREGATIONS,
    FeatureSpec,
    FeatureView,
    FieldType,
    SourceDefinition,
)

# Columns of one tile in a group's ring, before the per-`equals` counts.
TILE, COUNT, SUM, SUMSQ, MIN, MAX = range(6)
TILE_STATS = 6


@dataclass(frozen=True)
class TileGroup:
    """Tiles of one field at one tile size, shared by every feature that reads them."""

    field: str
    tile_s: float
    n: int
    equals: tuple[str | float, ...]
    numeric: bool

    @property
    def width(self) -> int:
        return TILE_STATS + len(self.equals)

    def equals_column(self, value: str | float | bool) -> int:
        return TILE_STATS + self.equals.index(_equals_key(value, self.numeric))


@dataclass(frozen=True)
class FeaturePlan:
    """Where one feature reads its value from."""

    spec: FeatureSpec
    window_s: float
    group: int | None  # index into ViewPlan.groups (tiled aggregations)
    last: int | None  # index into ViewPlan.last_fields (last, time_since_last)


@dataclass(frozen=True)
class ViewPlan:
    """The compiled view: tile groups, last-value fields and each feature's place.

    Attributes:
        view: the definition compiled.
        field_types: type of every field the plan reads.
        lateness_s: an event older than the entity's newest by more than this is too
            late (the source's `allowed_lateness_s`).
        groups: tile groups in a stable order.
        last_fields: fields whose newest value is kept.
        features: one plan per feature, in the view's order.
    """

    view: FeatureView
    field_types: dict[str, FieldType]
    lateness_s: float
    groups: tuple[TileGroup, ...]
    last_fields: tuple[str, ...]
    features: tuple[FeaturePlan, ...]

    @classmethod
    def of(cls, view: FeatureView, source: SourceDefinition) -> ViewPlan:
        groups: dict[tuple[str, float, int], list[str | float]] = {}
        last_fields: list[str] = []
        placed: list[tuple[FeatureSpec, float, tuple[str, float, int] | None, str | None]] = []
        for spec in view.features:
            window = spec.window_s if spec.window_s is not None else view.retention_s
            numeric = source.fields[spec.field].type != FieldType.str
            if spec.agg in TILED_AGGREGATIONS:
                key = (spec.field, window / spec.tiles, spec.tiles)
                equals = groups.setdefault(key, [])
                if spec.agg == "fraction":
                    assert spec.equals is not None  # FeatureSpec validates it
                    value = _equals_key(spec.equals, numeric)
                    if value not in equals:
                        equals.append(value)
                placed.append((spec, window, key, None))
            else:
                if spec.field not in last_fields:
                    last_fields.append(spec.field)
                placed.append((spec, window, None, spec.field))
        keys = list(groups)
        tile_groups = tuple(
            TileGroup(
                field=f,
                tile_s=t,
                n=n,
                equals=tuple(groups[(f, t, n)]),
                numeric=source.fields[f].type != FieldType.str,
            )
            for f, t, n in keys
        )
        features = tuple(
            FeaturePlan(
                spec=spec,
                window_s=window,
                group=keys.index(key) if key is not None else None,
                last=last_fields.index(last) if last is not None else None,
            )
            for spec, window, key, last in placed
        )
        used = {g.field for g in tile_groups} | set(last_fields)
        return cls(
            view=view,
            field_types={f: source.fields[f].type for f in sorted(used)},
            lateness_s=source.allowed_lateness_s,
            groups=tile_groups,
            last_fields=tuple(last_fields),
            features=features,
        )

    @cached_property
    def categorical_fields(self) -> tuple[str, ...]:
        """Last-value fields holding strings (their values are kept beside the numbers)."""
        return tuple(f for f in self.last_fields if self.field_types[f] == FieldType.str)

    @cached_property
    def fingerprint(self) -> str:
        """Changes whenever the state layout does, so old state is never misread."""
        doc = {
            "groups": [[g.field, g.tile_s, g.n, list(g.equals)] for g in self.groups],
            "last": list(self.last_fields),
            "types": {k: str(v) for k, v in self.field_types.items()},
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:8]


def _equals_key(value: str | float | bool, numeric: bool) -> str | float:
    """How an `equals` value is compared: as a float on numeric fields, else as text."""
    if numeric:
        return float(value)
    return str(value)
