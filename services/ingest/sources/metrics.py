"""Metrics of polled sources; their breakers' state is `signalops_breaker_state`
with dependency "source:<name>" (libs/common/resilience.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

POLLS = Counter(
    "signalops_ingest_polls_total",
    "Polls of a polled source: ok, failed (source down or breaker open), invalid "
    "(answered with no list of records)",
    ["source", "outcome"],
)
SNAPSHOT_AGE = Gauge(
    "signalops_ingest_stale_snapshot_age_seconds",
    "Age of the cached snapshot re-emitted flagged stale while a polled source is down "
    "(0 while it answers)",
    ["source"],
)
SNAPSHOT_EXPIRED = Gauge(
    "signalops_ingest_polled_source_expired",
    "1 while a polled source is down with no cached snapshot younger than its "
    "max_stale_s: nothing of it is emitted (alerted on)",
    ["source"],
)
