"""Data quality per source and field: null, out-of-range and outlier rates, freshness.

Pure and per batch, so the cost per record stays small: `profile_batch`
summarises a batch's accepted signals and field rejections by source, and
`QualityMonitor.observe` folds each summary in with O(1) work per batch plus
vectorised work per value. Rates are over about the last `window_records` records
(an exponentially weighted share); outliers are judged by a robust z-score against
the median and MAD of a bounded ring of each numeric field's recent values, the
reference refreshed after every quarter ring of new values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from libs.common.definitions import FieldType, QualityThresholds, SourceDefinition
from libs.common.errors import RecordInvalid
from libs.common.schemas import Signal
from services.ingest.core.reasons import MISSING_FIELD, OUT_OF_RANGE, TOO_LATE
from services.ingest.errors import SourceRecordInvalid

NULL = "null"
OUT_OF_RANGE_CHECK = "out_of_range"
OUTLIER = "outlier"
FRESHNESS = "freshness"
CHECKS = (NULL, OUT_OF_RANGE_CHECK, OUTLIER)

_NUMERIC = frozenset({FieldType.int, FieldType.float})
# MAD to standard deviation of a normal law (scipy.stats.median_abs_deviation's
# scale="normal"; numpy here: scipy's wrapper costs more than the median itself).
_MAD_TO_SD = 1.482602218505602
# Mean absolute deviation to standard deviation of a normal law (Iglewicz and Hoaglin),
# the scale when more than half the values are equal and the MAD is 0.
_MEAN_AD_TO_SD = 1.2533


@dataclass
class SourceBatch:
    """What one batch showed of one source.

    Attributes:
        records: accepted signals.
        field_rejected: signals rejected for one of their fields.
        nulls: signals whose field was null or absent, by field (accepted ones for an
            optional field, dead-lettered missing_field ones for a required field).
        out_of_range: signals rejected out_of_range, by field.
        values: the accepted numeric values, by field.
        lags_s: arrival minus event time of each accepted signal, in seconds.
        late: accepted signals flagged late; too_late: those dead-lettered too_late.
    """

    records: int = 0
    field_rejected: int = 0
    nulls: Counter[str] = field(default_factory=Counter)
    out_of_range: Counter[str] = field(default_factory=Counter)
    values: dict[str, list[float]] = field(default_factory=dict)
    lags_s: list[float] = field(default_factory=list)
    late: int = 0
    too_late: int = 0


def profile_batch(
    valid: Iterable[Signal],
    rejected: Iterable[RecordInvalid],
    sources: Mapping[str, SourceDefinition],
    now_ts: float,
) -> dict[str, SourceBatch]:
    """Summarise a batch by source: counts, numeric columns and arrival lags.

    Args:
        valid: the accepted signals.
        rejected: the batch's rejections; those of a known source count.
        sources: the registered sources by name.
        now_ts: the arrival time (epoch seconds).
    """
    out: dict[str, SourceBatch] = {}
    groups: dict[str, list[Signal]] = {}
    for s in valid:
        group = groups.get(s.source)
        if group is None:
            group = groups[s.source] = []
        group.append(s)
    # Column by column in list comprehensions: about twice as fast as a loop per record.
    for name, signals in groups.items():
        b = out[name] = SourceBatch(records=len(signals))
        rows = [s.fields for s in signals]
        for field_name, spec in sources[name].fields.items():
            column = [r.get(field_name) for r in rows]
            nulls = column.count(None)
            if nulls:
                b.nulls[field_name] = nulls
            if spec.type in _NUMERIC:
                values = [v for v in column if v is not None] if nulls else column
                b.values[field_name] = values  # type: ignore[assignment]  # numbers by validation
        b.lags_s = [now_ts - s.event_time.timestamp() for s in signals]
        b.late = [s.late for s in signals].count(True)
    for e in rejected:
        if not isinstance(e, SourceRecordInvalid) or e.source not in sources:
            continue
        hit = out.get(e.source)
        if hit is None:
            hit = out[e.source] = SourceBatch()
        if e.field is not None:
            hit.field_rejected += 1
            if e.reason == OUT_OF_RANGE:
                hit.out_of_range[e.field] += 1
            elif e.reason == MISSING_FIELD:  # a required field null or absent
                hit.nulls[e.field] += 1
        elif e.reason == TOO_LATE:
            hit.too_late += 1
    return out


class RollingRate:
    """The share of records with a property over about the last `window` records.

    An exponentially weighted mean per record, updated per batch as if the batch's
    hits were spread evenly over it: O(1) whatever the batch size.
    """

    def __init__(self, window: int) -> None:
        self._keep = 1.0 - 1.0 / window
        self.value: float | None = None

    def update(self, hits: int, n: int) -> None:
        if n <= 0:
            return
        share = hits / n
        if self.value is None:
            self.value = share
            return
        decay = self._keep**n
        self.value = self.value * decay + (1.0 - decay) * share


class RobustOutliers:
    """Robust z-scores |x - median| / scale against a ring of a field's recent values.

    `scale` is the MAD scaled to a normal law's standard deviation, else the
    mean absolute deviation scaled likewise; when both are 0 (a constant field) no
    value is judged. The reference is refreshed after `capacity // 4` new values,
    so a level shift stops counting as outliers within about a ring.
    """

    def __init__(self, capacity: int = 2048, min_values: int = 50) -> None:
        self._ring = np.empty(capacity, dtype=np.float64)
        self._size = 0
        self._pos = 0
        self._since = 0
        self._refresh = max(1, capacity // 4)
        self._min_values = min_values
        self.median: float | None = None
        self.scale: float = 0.0

    def count(self, values: np.ndarray, z: float) -> int:
        """Values farther than `z` robust standard deviations from the reference."""
        if self.median is None or self.scale == 0.0 or values.size == 0:
            return 0
        return int(np.count_nonzero(np.abs(values - self.median) > z * self.scale))

    def push(self, values: np.ndarray) -> None:
        cap = self._ring.size
        values = values[-cap:]
        n = values.size
        first = min(n, cap - self._pos)
        self._ring[self._pos : self._pos + first] = values[:first]
        self._ring[: n - first] = values[first:]
        self._pos = (self._pos + n) % cap
        self._size = min(cap, self._size + n)
        self._since += n
        if self._size >= self._min_values and (self.median is None or self._since >= self._refresh):
            self._refit()

    def _refit(self) -> None:
        window = self._ring[: self._size]
        self.median = float(np.median(window))
        deviations = np.abs(window - self.median)
        self.scale = float(np.median(deviations)) * _MAD_TO_SD
        if self.scale == 0.0:
            self.scale = float(np.mean(deviations)) * _MEAN_AD_TO_SD
        self._since = 0


@dataclass
class FieldQuality:
    """One field's rolling rates; `outliers` only for numeric fields."""

    null: RollingRate
    out_of_range: RollingRate
    outlier: RollingRate
    outliers: RobustOutliers | None


@dataclass
class SourceQuality:
    thresholds: QualityThresholds
    fields: dict[str, FieldQuality]
    last_record_ts: float | None = None
    records: int = 0


class QualityMonitor:
    """Rolling data quality of every registered source.

    Args:
        sources: the registered sources (thresholds in each one's `quality`).
        started_ts: when ingest started; a source never heard from is as old as that.
        ring: values kept per numeric field for the outlier reference.
    """

    def __init__(
        self, sources: Iterable[SourceDefinition], started_ts: float, *, ring: int = 2048
    ) -> None:
        self.started_ts = started_ts
        self.sources: dict[str, SourceQuality] = {}
        for s in sources:
            w = s.quality.window_records
            self.sources[s.name] = SourceQuality(
                s.quality,
                {
                    name: FieldQuality(
                        RollingRate(w),
                        RollingRate(w),
                        RollingRate(w),
                        RobustOutliers(ring) if spec.type in _NUMERIC else None,
                    )
                    for name, spec in s.fields.items()
                },
            )

    def observe(self, source: str, batch: SourceBatch, now_ts: float) -> dict[str, int]:
        """Fold one batch of `source` in.

        Returns:
            Outliers counted in the batch, by field (judged before its values join the
            reference, so a burst of outliers cannot hide itself).
        """
        q = self.sources[source]
        outliers: dict[str, int] = {}
        if batch.records:
            q.last_record_ts = now_ts
            q.records += batch.records
        for name, fq in q.fields.items():
            fq.null.update(batch.nulls.get(name, 0), batch.records + batch.field_rejected)
            fq.out_of_range.update(
                batch.out_of_range.get(name, 0), batch.records + batch.field_rejected
            )
            values = batch.values.get(name)
            if fq.outliers is not None and values:
                column = np.asarray(values, dtype=np.float64)
                n = outliers[name] = fq.outliers.count(column, q.thresholds.outlier_z)
                fq.outlier.update(n, column.size)
                fq.outliers.push(column)
        return outliers

    def freshness_s(self, source: str, now_ts: float) -> float:
        """Seconds since the source's last accepted record (or since ingest started)."""
        last = self.sources[source].last_record_ts
        return now_ts - (self.started_ts if last is None else last)

    def rates(self, source: str) -> dict[tuple[str, str], float]:
        """(field, check) -> the current rate, for the checks that have seen data."""
        out: dict[tuple[str, str], float] = {}
        for name, fq in self.sources[source].fields.items():
            for check, rate in ((NULL, fq.null), (OUT_OF_RANGE_CHECK, fq.out_of_range)):
                if rate.value is not None:
                    out[(name, check)] = rate.value
            if fq.outlier.value is not None:
                out[(name, OUTLIER)] = fq.outlier.value
        return out

    def breaches(self, source: str) -> dict[tuple[str, str], bool]:
        """(field, check) -> whether its rate is above the source's threshold."""
        t = self.sources[source].thresholds
        limit = {NULL: t.max_null_rate, OUT_OF_RANGE_CHECK: t.max_out_of_range_rate}
        limit[OUTLIER] = t.max_outlier_rate
        return {key: rate > limit[key[1]] for key, rate in self.rates(source).items()}

    def stale(self, source: str, now_ts: float) -> bool:
        """Whether the source has been silent longer than its `max_silence_s`."""
        limit = self.sources[source].thresholds.max_silence_s
        return limit is not None and self.freshness_s(source, now_ts) > limit
