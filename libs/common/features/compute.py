"""Point-in-time feature computation, shared by the streaming and training paths.

`compute_view` turns an entity's event history into one feature vector as of a
time. The features service calls it on each update; retraining calls it at
every label's as-of time. One function, so no training/serving skew.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from libs.common.definitions import FeatureView
from libs.common.features.aggregations import AGGREGATIONS

FeatureVector = dict[str, float | None]


@dataclass
class EventHistory:
    """One entity's events of one source, sorted by event time (epoch seconds).

    Events with the same id are kept once, so at-least-once delivery is harmless.
    """

    times: list[float] = field(default_factory=list)
    rows: list[Mapping[str, Any]] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)

    def add(self, event_id: str, ts: float, fields: Mapping[str, Any]) -> bool:
        if event_id in self.ids:
            return False
        self.ids.add(event_id)
        i = bisect.bisect_right(self.times, ts)
        self.times.insert(i, ts)
        self.rows.insert(i, fields)
        return True

    @classmethod
    def from_events(cls, events: Sequence[tuple[str, float, Mapping[str, Any]]]) -> EventHistory:
        h = cls()
        for event_id, ts, fields in sorted(events, key=lambda e: e[1]):
            h.add(event_id, ts, fields)
        return h


def compute_view(view: FeatureView, history: EventHistory, as_of: float) -> FeatureVector:
    """The features of `view` from events with time <= `as_of`.

    Args:
        view: the feature view definition.
        history: the entity's events, oldest first.
        as_of: epoch seconds; events after it are invisible (point-in-time correct).

    Returns:
        Feature name -> value (None where the window holds no usable value).
    """
    hi = bisect.bisect_right(history.times, as_of)
    out: FeatureVector = {}
    for spec in view.features:
        lo = 0
        if spec.window_s is not None:
            lo = bisect.bisect_right(history.times, as_of - spec.window_s, 0, hi)
        values = [history.rows[i].get(spec.field) for i in range(lo, hi)]
        out[spec.name] = AGGREGATIONS[spec.agg](values, spec.equals)
    return out
