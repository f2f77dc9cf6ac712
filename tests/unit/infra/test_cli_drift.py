"""`signalops drift status` reads the monitor's metrics over HTTP and shows them."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from typer.testing import CliRunner

from infra.cli import app
from libs.common.net import free_port


def test_drift_status_shows_rolling_performance_and_input_drift(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()
    rolling = Gauge(
        "signalops_model_rolling", "r", ["model", "version", "variant", "metric"], registry=registry
    )
    psi = Gauge("signalops_drift_psi", "p", ["model", "version", "feature"], registry=registry)
    ks = Gauge("signalops_drift_ks_pvalue", "k", ["model", "version", "feature"], registry=registry)
    rolling.labels("default", "3", "champion", "accuracy").set(0.912)
    rolling.labels("default", "3", "champion", "labels").set(1500)
    rolling.labels("other", "1", "champion", "accuracy").set(0.5)
    psi.labels("default", "3", "device_stats.temperature_mean_1h").set(0.31)
    ks.labels("default", "3", "device_stats.temperature_mean_1h").set(1e-9)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    monkeypatch.setenv("SIGNALOPS_RETRAIN_METRICS_PORT", str(port))
    monkeypatch.setenv("COLUMNS", "200")
    try:
        result = CliRunner().invoke(app, ["drift", "status", "--model", "default"])
    finally:
        server.shutdown()
        thread.join(5)
    assert result.exit_code == 0, result.output
    assert "0.912" in result.output and "1500" in result.output
    assert "device_stats.temperature_mean_1h" in result.output and "0.310" in result.output
    assert "other" not in result.output


def test_drift_status_names_the_unreachable_service(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("SIGNALOPS_RETRAIN_METRICS_PORT", str(port))
    result = CliRunner().invoke(app, ["drift", "status"])
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in result.output
