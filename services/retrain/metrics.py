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

# The drift monitor (services/retrain/monitoring.py).
DRIFT_PSI = Gauge(
    "signalops_drift_psi",
    "PSI of the last window of a served input (or 'prediction') vs its training reference",
    ["model", "version", "feature"],
)
DRIFT_KS_PVALUE = Gauge(
    "signalops_drift_ks_pvalue", "KS p-value of the same window", ["model", "version", "feature"]
)
DRIFT_EVENTS = Counter("signalops_drift_events_total", "Drift events published", ["model", "kind"])
ROLLING = Gauge(
    "signalops_model_rolling",
    "Rolling performance on the newest labels: accuracy, log_loss, auc, calibration, labels",
    ["model", "version", "variant", "metric"],
)
LABELS_JOINED = Gauge(
    "signalops_monitor_labels",
    "Labels the monitor saw since it started: joined (by prediction id), by_entity, "
    "unjoined (no prediction found: not judged), invalid_label (not 0 or 1), "
    "corrected (a later label for an answer already judged: not judged twice)",
    ["model", "how"],
)
