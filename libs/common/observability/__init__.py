"""Logs, traces and metrics, configured the same way in every service."""

from libs.common.observability.logging import configure_logging, get_logger
from libs.common.observability.metrics import DEAD_LETTERS, LATENCY, MESSAGES, serve_metrics
from libs.common.observability.tracing import (
    configure_tracing,
    extract_context,
    inject_headers,
    tracer,
)

__all__ = [
    "DEAD_LETTERS",
    "LATENCY",
    "MESSAGES",
    "configure_logging",
    "configure_tracing",
    "extract_context",
    "get_logger",
    "inject_headers",
    "serve_metrics",
    "tracer",
]
