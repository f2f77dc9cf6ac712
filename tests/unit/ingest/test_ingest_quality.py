"""Data quality statistics: rolling rates, robust outliers, per-batch profiles, freshness,
and the batch-observed arrival-lag histogram (issue 9)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from libs.common.definitions import Definitions
from libs.common.errors import RecordInvalid
from libs.common.schemas import Signal
from services.ingest.core.quality import (
    QualityMonitor,
    RobustOutliers,
    RollingRate,
    SourceBatch,
    profile_batch,
)
from services.ingest.errors import SourceRecordInvalid
from services.ingest.quality_metrics import ArrivalLagHistogram

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)


def _signal(entity: str, fields: dict[str, float | str | None], age_s: float = 5.0) -> Signal:
    return Signal(
        source="sensors",
        entity_id=entity,
        event_time=NOW - timedelta(seconds=age_s),
        fields=fields,
    )


@settings(max_examples=100, deadline=None)
@given(
    batches=st.lists(
        st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
        min_size=1,
        max_size=20,
    )
)
def test_rolling_rate_stays_within_the_batch_shares(batches: list[tuple[int, int]]) -> None:
    """The rolling rate is a weighted mean of the batches' shares: never outside them."""
    rate = RollingRate(window=100)
    for hits, n in batches:
        rate.update(hits, n)
    shares = [h / n for h, n in batches]
    assert rate.value is not None
    assert min(shares) - 1e-12 <= rate.value <= max(shares) + 1e-12


def test_rolling_rate_forgets_old_batches() -> None:
    """After many clean records a burst of nulls has mostly faded (window ~ 100 records)."""
    rate = RollingRate(window=100)
    rate.update(100, 100)
    rate.update(0, 1000)
    assert rate.value is not None and rate.value < 0.001


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=60, max_size=400),
    cut=st.integers(1, 50),
)
def test_outlier_reference_is_the_median_of_the_last_ring(values: list[float], cut: int) -> None:
    """Pushed in any batch sizes, the ring keeps the newest `capacity` values and the
    reference, once refreshed, is their median."""
    ring = RobustOutliers(capacity=64, min_values=1)
    for i in range(0, len(values), cut):
        ring.push(np.asarray(values[i : i + cut]))
    ring._refit()  # the reference as of now, whatever the refresh cadence
    assert ring.median == pytest.approx(float(np.median(values[-64:])))


def test_outliers_are_counted_against_the_reference() -> None:
    """Values far from the recent median (robust z > 3.5) count; usual ones do not."""
    rng = np.random.default_rng(7)
    ring = RobustOutliers(capacity=512, min_values=50)
    ring.push(rng.normal(20.0, 1.0, 512))
    batch = np.concatenate([rng.normal(20.0, 1.0, 95), [60.0, -30.0, 100.0, 45.0, 29.0]])
    assert ring.count(batch, 3.5) == 5


def test_constant_field_never_has_outliers_by_zero_scale() -> None:
    """A field that is always the same value has no scale: nothing is judged an outlier."""
    ring = RobustOutliers(capacity=128, min_values=10)
    ring.push(np.full(128, 3.0))
    assert ring.count(np.asarray([3.0, 1e9]), 3.5) == 0


def test_profile_counts_nulls_values_lags_and_rejections(definitions: Definitions) -> None:
    """A batch profile holds per-field nulls (absent or null, including required fields
    dead-lettered missing), numeric columns, lags, and the out_of_range and too_late
    rejections of known sources."""
    sources = {s.name: s for s in definitions.sources}
    valid = [
        _signal("a", {"temperature": 20.0, "status": "ok", "count": 3}, age_s=2),
        _signal("b", {"temperature": 21.0, "status": "ok", "count": None}, age_s=10),
    ]
    rejected: list[RecordInvalid] = [
        SourceRecordInvalid("out_of_range", detail="", source="sensors", field="temperature"),
        SourceRecordInvalid("too_late", detail="", source="sensors"),
        SourceRecordInvalid("missing_field", detail="", source="sensors", field="status"),
        RecordInvalid("invalid_json", detail=""),
    ]
    profile = profile_batch(valid, rejected, sources, NOW.timestamp())
    b = profile["sensors"]
    assert (b.records, b.field_rejected, b.too_late) == (2, 2, 1)
    assert b.nulls == {"count": 1, "active": 2, "note": 2, "status": 1}
    assert b.values == {"temperature": [20.0, 21.0], "count": [3]}
    assert b.out_of_range == {"temperature": 1}
    assert b.lags_s == pytest.approx([2.0, 10.0])


def test_monitor_rates_breaches_and_freshness(definitions: Definitions) -> None:
    """Rates follow the batches, breach above the source's thresholds, and freshness
    counts from the last record (or from start); max_silence_s makes it stale."""
    start = NOW.timestamp()
    monitor = QualityMonitor(definitions.sources, start - 100)
    assert monitor.freshness_s("sensors", start) == 100
    batch = SourceBatch(records=10, field_rejected=0)
    batch.nulls.update({"count": 10, "note": 0})
    batch.values["temperature"] = [20.0] * 10
    monitor.observe("sensors", batch, start)
    rates = monitor.rates("sensors")
    assert rates[("count", "null")] == 1.0 and rates[("temperature", "null")] == 0.0
    breaches = monitor.breaches("sensors")
    assert breaches[("count", "null")] and not breaches[("temperature", "null")]
    assert monitor.freshness_s("sensors", start + 7) == 7
    assert not monitor.stale("sensors", start + 1e9)  # no max_silence_s: never stale


def test_outliers_in_a_batch_are_judged_before_joining_the_reference(
    definitions: Definitions,
) -> None:
    """A batch of extreme values counts as outliers against the earlier reference."""
    monitor = QualityMonitor(definitions.sources, NOW.timestamp(), ring=256)
    rng = np.random.default_rng(3)
    calm = SourceBatch(records=256, values={"temperature": list(rng.normal(20, 1, 256))})
    assert monitor.observe("sensors", calm, NOW.timestamp()) == {"temperature": 0}
    burst = SourceBatch(records=100, values={"temperature": [80.0] * 100})
    assert monitor.observe("sensors", burst, NOW.timestamp()) == {"temperature": 100}
    assert monitor.breaches("sensors")[("temperature", "outlier")]


def test_arrival_lag_histogram_buckets_a_batch() -> None:
    """A batch of lags lands in cumulative buckets with its count and sum, per source."""
    histogram = ArrivalLagHistogram(buckets=(1.0, 10.0))
    registry = CollectorRegistry()
    registry.register(histogram)
    histogram.observe_many("sensors", [0.5, 1.0, 5.0, 50.0])
    histogram.observe_many("sensors", [2.0])
    text = generate_latest(registry).decode()
    assert 'signalops_ingest_arrival_lag_seconds_bucket{le="1",source="sensors"} 2.0' in text
    assert 'signalops_ingest_arrival_lag_seconds_bucket{le="10",source="sensors"} 4.0' in text
    assert 'signalops_ingest_arrival_lag_seconds_bucket{le="+Inf",source="sensors"} 5.0' in text
    assert 'signalops_ingest_arrival_lag_seconds_count{source="sensors"} 5.0' in text
    assert 'signalops_ingest_arrival_lag_seconds_sum{source="sensors"} 58.5' in text
