"""Environment the Ray head needs before it starts, for Serve's HAProxy ingress.

The Serve controller reads these at start (RAY_NOTES.md), so they must be in the
environment of the process that starts Ray, not set later.
"""

from __future__ import annotations

from libs.common.binaries import haproxy_binary


def serve_ingress_env(
    *,
    haproxy: bool = True,
    drain_s: float | None = None,
    haproxy_metrics_port: int | None = None,
    haproxy_stats_port: int | None = None,
) -> dict[str, str]:
    """Variables enabling HAProxy ingress and throughput-optimized replicas.

    Args:
        haproxy: False falls back to Serve's own Python proxy (documented fallback).
        drain_s: shorten the ingress drain on redeploys (tests, local stack).
        haproxy_metrics_port / haproxy_stats_port: move HAProxy's own ports, which
            otherwise bind all interfaces on 9101 and 8404.
    """
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    binary = haproxy_binary() if haproxy else None
    if binary:
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = binary
        env["RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S"] = "30"
        env["RAY_SERVE_HAPROXY_NBTHREAD"] = "2"
        if haproxy_metrics_port:
            env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(haproxy_metrics_port)
        if haproxy_stats_port:
            env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(haproxy_stats_port)
    if drain_s is not None:
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(drain_s)
    return env
