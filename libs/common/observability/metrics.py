"""Prometheus metrics: names shared across services, one registry per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

MESSAGES = Counter("signalops_messages_total", "Messages handled", ["service", "topic", "outcome"])
DEAD_LETTERS = Counter(
    "signalops_dead_letters_total", "Records sent to the dead-letter topic", ["service", "reason"]
)
LATENCY = Histogram(
    "signalops_handler_seconds",
    "Time to handle a batch or request",
    ["service", "handler"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_LAG = Gauge("signalops_consumer_lag", "Messages behind the end", ["service", "topic"])
PARTITION_LAG = Gauge(
    "signalops_consumer_partition_lag",
    "Messages behind the end, per partition",
    ["service", "topic", "partition"],
)
COMMIT_FAILURES = Counter(
    "signalops_commit_failures_total",
    "Offset commits that failed or were skipped (the batch is redelivered)",
    ["service", "loop", "error"],
)
HANDLER_RETRIES = Counter(
    "signalops_handler_retries_total", "Retried batches of a consume loop", ["service", "loop"]
)
LOOP_RESTARTS = Counter(
    "signalops_consume_loop_restarts_total",
    "Consume loops restarted after a failure",
    ["service", "loop"],
)
BREAKER_STATE = Gauge(
    "signalops_breaker_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open",
    ["dependency"],
)
BREAKER_OPENED = Counter(
    "signalops_breaker_opened_total", "Times a dependency's breaker opened", ["dependency"]
)
RETRIES = Counter(
    "signalops_retries_total", "Retried calls to a dependency, by dependency", ["dependency"]
)
CALL_FAILURES = Counter(
    "signalops_dependency_failures_total",
    "Calls to a dependency that failed after their retries",
    ["dependency"],
)

REDIS_OOM = Counter(
    "signalops_redis_oom_total", "Online-store writes refused because Redis is out of memory"
)

HTTP_IN_FLIGHT = Gauge(
    "signalops_http_in_flight_requests",
    "Requests being served that count against the service's concurrency limit",
    ["service"],
)
HTTP_REFUSED = Counter(
    "signalops_http_refused_total",
    "Requests answered 503 at once, before their body was read, by reason",
    ["service", "reason"],
)

# Ingest's schema drift and data quality (issue 9); here because alert rules use them.
SCHEMA_DRIFT = Counter(
    "signalops_ingest_schema_drift_total",
    "Schema drift sightings per source and kind (unknown_field, missing_optional, "
    "type_coerced pass; missing_required, type_changed, new_version are dead-lettered)",
    ["source", "kind"],
)
QUALITY_BREACH = Gauge(
    "signalops_ingest_quality_breach",
    "1 while a source field's quality check is beyond its threshold (check: null, "
    "out_of_range, outlier; freshness with field '*')",
    ["source", "field", "check"],
)

INFO = Gauge("signalops_up", "1 while the service runs", ["service"])


def serve_metrics(port: int, host: str = "127.0.0.1", *, service: str | None = None) -> None:
    """Expose /metrics on host:port in a daemon thread (services without their own HTTP).

    `host` is SIGNALOPS_METRICS_HOST: loopback on a laptop, 0.0.0.0 in a pod.
    """
    start_http_server(port, addr=host)
    if service:
        INFO.labels(service).set(1)
