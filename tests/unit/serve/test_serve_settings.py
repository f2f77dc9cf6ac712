"""Serve settings, the payload replicas get, and the application built from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.serve.main import app_builder, build_app
from services.serve.settings import ServeSettings, settings_payload


def test_payload_round_trips_with_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    """A replica rebuilds the same settings from the payload, wherever its cwd is."""
    monkeypatch.chdir(tmp_path)
    settings = ServeSettings(
        data_dir=Path("data"),
        definitions=Path("defs.yaml"),
        admin_token="s3cret",
        serve_num_replicas=3,
    )
    payload = settings_payload(settings)
    assert payload["data_dir"] == str(tmp_path / "data")
    assert payload["definitions"] == str(tmp_path / "defs.yaml")
    assert payload["mlflow_tracking_uri"] == f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    again = ServeSettings(**payload)
    assert (again.serve_num_replicas, again.topics) == (3, settings.topics)
    # The token stays out of Serve's stored arguments: the replica reads its env.
    assert "admin_token" not in payload and "s3cret" not in str(payload)


def test_priority_limits_must_be_ordered() -> None:
    """Thresholds out of order fail at start with the three values."""
    with pytest.raises(ValidationError, match="low <= normal <= hard cap, got 50, 10, 256"):
        ServeSettings(priority_low_limit=50, priority_normal_limit=10)
    with pytest.raises(ValidationError, match=r"at least the priority hard cap plus .* \(312\)"):
        ServeSettings(serve_max_ongoing_requests=300)


def test_build_app_sizes_the_deployment() -> None:
    """The deployment gets fractional CPUs, replicas, concurrency and the settings payload,
    never the admin token (Serve stores deployment arguments)."""
    app = build_app(ServeSettings(serve_num_replicas=1, admin_token="tok"))
    # Application has no public accessor for its bound deployment.
    deployment = app._bound_deployment
    assert deployment.num_replicas == 1
    assert deployment.ray_actor_options["num_cpus"] == 0.25
    assert deployment.max_ongoing_requests == 320
    assert deployment.init_args[0]["serve_num_replicas"] == 1
    assert "admin_token" not in deployment.init_args[0] and "tok" not in str(deployment.init_args)


def test_app_builder_keeps_the_token_out_of_deployment_args() -> None:
    """Config deploys (serve_config.yaml) pass overrides and never the admin token."""
    app = app_builder({"definitions": "/etc/signalops/signalops.yaml", "serve_port": "8000"})
    args = app._bound_deployment.init_args[0]
    assert args["definitions"] == "/etc/signalops/signalops.yaml"
    assert "admin_token" not in args
