"""What ingest learns from each batch it took: schema drift, data quality, lateness.

One `SignalObserver` per service. The handler calls `observe` once per batch after
the broker acknowledged it, and publishes the schema-drift events it returns. Work
is per batch and source: a profile (core/quality.py), cached metric children.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge

from libs.common.definitions import Definitions
from libs.common.observability.metrics import QUALITY_BREACH
from libs.common.schemas import SchemaDriftDetected, Signal
from services.ingest.core.quality import (
    FRESHNESS as FRESHNESS_CHECK,
)
from services.ingest.core.quality import (
    NULL,
    OUT_OF_RANGE_CHECK,
    OUTLIER,
    QualityMonitor,
    SourceBatch,
    profile_batch,
)
from services.ingest.core.schema_drift import DriftTally
from services.ingest.core.verdicts import Judged
from services.ingest.drift_log import OTHER_FIELDS, SchemaDriftLog
from services.ingest.quality_metrics import (
    ARRIVAL_LAG,
    FRESHNESS,
    LATE_RECORDS,
    QUALITY_RATE,
    QUALITY_VALUES,
    SOURCE_RECORDS,
)


class SignalObserver:
    """Schema drift log, quality monitor and their metrics for the registered sources.

    Args:
        definitions: the registered sources.
        event_interval_s: least time between two schema-drift events of one key.
        wall_clock: epoch seconds, read when /metrics is scraped (freshness).
    """

    def __init__(
        self,
        definitions: Definitions,
        *,
        event_interval_s: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = {s.name: s for s in definitions.sources}
        self._wall_clock = wall_clock
        self.drift = SchemaDriftLog(definitions, interval_s=event_interval_s)
        self.quality = QualityMonitor(definitions.sources, wall_clock())
        self._children: dict[tuple[int | str, ...], Any] = {}
        for name in self.sources:
            # Computed at scrape time: a silent source has no batch to update them.
            age, stale = self._freshness(name, wall_clock)
            FRESHNESS.labels(name).set_function(age)
            QUALITY_BREACH.labels(name, OTHER_FIELDS, FRESHNESS_CHECK).set_function(stale)

    def _freshness(
        self, source: str, wall_clock: Callable[[], float]
    ) -> tuple[Callable[[], float], Callable[[], float]]:
        def age() -> float:
            return self.quality.freshness_s(source, wall_clock())

        def stale() -> float:
            return float(self.quality.stale(source, wall_clock()))

        return age, stale

    def observe(
        self, judged: Judged, tally: DriftTally, now: datetime
    ) -> list[SchemaDriftDetected]:
        """Fold in one acknowledged batch of signals.

        Returns:
            The schema-drift events now due, to publish on the schema-events topic (if
            that fails, pass them to `self.drift.rearm`).
        """
        now_ts = now.timestamp()
        profiles = profile_batch(
            [m for _, m in judged.valid if isinstance(m, Signal)],
            [e for _, e in judged.rejected],
            self.sources,
            now_ts,
        )
        for source, batch in profiles.items():
            self._export(source, batch, self.quality.observe(source, batch, now_ts))
        return self.drift.record(tally, now) if tally else []

    def report(self, source: str) -> dict[str, Any]:
        """A source's observed drift and quality, as `GET /v1/sources` shows them."""
        rates = self.quality.rates(source)
        breaches = self.quality.breaches(source)
        return {
            "drift": self.drift.report(source),
            "quality": {
                "records": self.quality.sources[source].records,
                "freshness_s": round(self.quality.freshness_s(source, self._wall_clock()), 3),
                "rates": {
                    f"{name}.{check}": round(rate, 6) for (name, check), rate in rates.items()
                },
                "breaches": sorted(f"{n}.{c}" for (n, c), hit in breaches.items() if hit),
            },
        }

    def _export(self, source: str, batch: SourceBatch, outliers: dict[str, int]) -> None:
        if batch.records:
            self._counter(SOURCE_RECORDS, source).inc(batch.records)
            ARRIVAL_LAG.observe_many(source, batch.lags_s)
        if batch.late:
            self._counter(LATE_RECORDS, source, "accept_flagged").inc(batch.late)
        if batch.too_late:
            self._counter(LATE_RECORDS, source, "dead_letter").inc(batch.too_late)
        for check, counts in (
            (NULL, batch.nulls),
            (OUT_OF_RANGE_CHECK, batch.out_of_range),
            (OUTLIER, outliers),
        ):
            for name, n in counts.items():
                if n:
                    self._counter(QUALITY_VALUES, source, name, check).inc(n)
        breaches = self.quality.breaches(source)
        for (name, check), rate in self.quality.rates(source).items():
            self._gauge(QUALITY_RATE, source, name, check).set(rate)
            self._gauge(QUALITY_BREACH, source, name, check).set(float(breaches[(name, check)]))

    def _counter(self, metric: Counter, *labels: str) -> Counter:
        return self._child(metric, labels)  # type: ignore[no-any-return]

    def _gauge(self, metric: Gauge, *labels: str) -> Gauge:
        return self._child(metric, labels)  # type: ignore[no-any-return]

    def _child(self, metric: Counter | Gauge, labels: tuple[str, ...]) -> Any:
        key: tuple[int | str, ...] = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child
