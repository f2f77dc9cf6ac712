"""Ingest's per-source metrics: throughput, lateness, arrival lag and data quality.

Updated once per batch and source (never per record); label children are cached.
The breach gauge and the schema-drift counter live in libs/common/observability
because alert rules use them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

SOURCE_RECORDS = Counter(
    "signalops_ingest_source_records_total",
    "Signals accepted per source (throughput: rate() of it)",
    ["source"],
)
LATE_RECORDS = Counter(
    "signalops_ingest_late_records_total",
    "Signals older than their source's allowed lateness, by what happened: accept_flagged "
    "(published with late=true) or dead_letter (too_late)",
    ["source", "policy"],
)
QUALITY_VALUES = Counter(
    "signalops_ingest_quality_values_total",
    "Field values failing a quality check (null: null or absent; out_of_range: "
    "dead-lettered; outlier: robust z-score beyond the source's outlier_z)",
    ["source", "field", "check"],
)
QUALITY_RATE = Gauge(
    "signalops_ingest_quality_rate",
    "Rolling share of a field's values failing a check, over about the source's "
    "quality.window_records records",
    ["source", "field", "check"],
)
FRESHNESS = Gauge(
    "signalops_ingest_source_freshness_seconds",
    "Seconds since the source's last accepted signal (since ingest started if none)",
    ["source"],
)

LAG_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)


class ArrivalLagHistogram(Collector):
    """Histogram of arrival minus event time per source, observed a whole batch at once.

    prometheus_client's Histogram observes one value per call; a batch of thousands
    is one `np.searchsorted` and one `np.bincount` here.
    """

    name = "signalops_ingest_arrival_lag_seconds"

    def __init__(self, buckets: tuple[float, ...] = LAG_BUCKETS) -> None:
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts: dict[str, np.ndarray] = {}
        self._sums: dict[str, float] = {}

    def observe_many(self, source: str, lags_s: list[float]) -> None:
        if not lags_s:
            return
        values = np.asarray(lags_s, dtype=np.float64)
        # Bucket i counts values <= bounds[i]; the last slot is +Inf.
        slots = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(slots, minlength=self._bounds.size + 1)
        if source in self._counts:
            self._counts[source] += counts
            self._sums[source] += float(values.sum())
        else:
            self._counts[source] = counts.astype(np.int64)
            self._sums[source] = float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            self.name, "Arrival minus event time of accepted signals, per source", labels=["source"]
        )
        for source, counts in self._counts.items():
            cumulative = np.cumsum(counts)
            buckets = [(f"{b:g}", float(c)) for b, c in zip(self._bounds, cumulative, strict=False)]
            buckets.append(("+Inf", float(cumulative[-1])))
            family.add_metric([source], buckets, self._sums[source])
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, "Arrival minus event time", labels=["source"])


ARRIVAL_LAG = ArrivalLagHistogram()
REGISTRY.register(ARRIVAL_LAG)
