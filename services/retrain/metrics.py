"""Prometheus metrics of the retrain service (served on settings.retrain_metrics_port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TRAINING_RUNS = Counter(
    "signalops_retrain_runs_total",
    "Training runs by result: promoted, registered (not promoted), skipped (no data), failed",
    ["model", "result"],
)
TRAINING_SECONDS = Histogram(
    "signalops_retrain_seconds",
    "Duration of one training run (join, train, register)",
    ["model"],
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
CHAMPION_AUC = Gauge(
    "signalops_retrain_champion_auc", "Holdout AUC of the last promoted version", ["model"]
)
OFFLINE_ROWS = Counter(
    "signalops_retrain_offline_rows_total", "Rows appended to the offline store", ["kind"]
)
