"""Prometheus metrics of the features service (on its /metrics, next to the shared ones).

Consumer lag per partition is the consume loop's (signalops_consumer_partition_lag).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import Counter, Histogram

from services.features.core.updates import SourceBatch, ViewUpdate

EVENTS = Counter(
    "signalops_features_events_total",
    "Signals met by a view: applied, late (applied, older than the entity's newest), "
    "too_late (dead-lettered) or duplicate (a redelivery the state already holds)",
    ["view", "outcome"],
)
FEATURES = Counter(
    "signalops_features_computed_total", "Feature values computed and written", ["view"]
)
FRESHNESS = Histogram(
    "signalops_features_freshness_seconds",
    "From a signal's arrival at ingest to its features readable in the online store",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STALE_SKIPPED = Counter(
    "signalops_features_stale_signals_total",
    "Stale re-emissions of a down polled source's snapshot, not applied again",
    ["source"],
)
REDIS_WRITE = Histogram(
    "signalops_features_redis_write_seconds",
    "Time of one batch's transactional write of states and vectors",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def record_applied(batch: SourceBatch, updates: Sequence[ViewUpdate]) -> None:
    for u in updates:
        name = u.plan.view.name
        a = u.applied
        late = a.accepted & (batch.events.ts < a.newest_before)
        EVENTS.labels(name, "applied").inc(int(a.accepted.sum()))
        EVENTS.labels(name, "late").inc(int(late.sum()))
        EVENTS.labels(name, "too_late").inc(int(a.too_late.sum()))
        EVENTS.labels(name, "duplicate").inc(int(a.duplicate.sum()))
        FEATURES.labels(name).inc(int(u.states.has_events.sum()) * len(u.plan.features))


# Records of a batch whose freshness is observed: evenly spaced, the newest included.
# Every record would cost a histogram update each (about 4 us; a batch's records were
# written at the same moment, so a sample describes it).
FRESHNESS_SAMPLE = 32


def observe_freshness(written: float, arrivals: Sequence[float]) -> None:
    if not arrivals:
        return
    ages = np.maximum(written - np.asarray(arrivals), 0.0)
    if len(ages) > FRESHNESS_SAMPLE:
        ages = ages[np.linspace(0, len(ages) - 1, FRESHNESS_SAMPLE).astype(int)]
    for age in ages.tolist():
        FRESHNESS.observe(age)
