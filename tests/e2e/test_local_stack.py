"""`signalops up | status | down` on free ports: the embedded stack a user starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from infra.local.stack import LocalStack
from libs.common.net import free_port, port_open
from libs.common.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SIGNALOPS = str(Path(sys.executable).parent / "signalops")
pytestmark = pytest.mark.e2e


def test_up_serves_predictions_and_down_leaves_nothing(tmp_path: Path) -> None:
    """`up` starts every component and a fresh stack answers; `down` stops them all."""
    ports = {
        "SIGNALOPS_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "SIGNALOPS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "SIGNALOPS_RAY_HEAD_PORT": str(free_port()),
        "SIGNALOPS_RAY_DASHBOARD_PORT": str(free_port()),
        "SIGNALOPS_SERVE_PORT": str(free_port()),
        "SIGNALOPS_INGEST_PORT": str(free_port()),
        "SIGNALOPS_FEATURES_METRICS_PORT": str(free_port()),
        "SIGNALOPS_RETRAIN_METRICS_PORT": str(free_port()),
        "SIGNALOPS_HAPROXY_METRICS_PORT": str(free_port()),
        "SIGNALOPS_HAPROXY_STATS_PORT": str(free_port()),
    }
    env = {
        **os.environ,
        **ports,
        "SIGNALOPS_DATA_DIR": str(tmp_path / "data"),
        "SIGNALOPS_DEFINITIONS": str(REPO / "signalops.yaml"),
    }
    # Ray's own variables from the test session must not leak into the stack's head.
    env = {k: v for k, v in env.items() if not k.startswith("RAY_SERVE_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SIGNALOPS, *args], env=env, capture_output=True, text=True, timeout=400, check=False
        )

    stack = LocalStack(
        Settings(
            _env_file=None,
            **{  # type: ignore[call-arg]
                "data_dir": tmp_path / "data",
                "kafka_bootstrap": ports["SIGNALOPS_KAFKA_BOOTSTRAP"],
                "redis_url": ports["SIGNALOPS_REDIS_URL"],
                "ray_head_port": int(ports["SIGNALOPS_RAY_HEAD_PORT"]),
            },
        )
    )
    try:
        up = cli("up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "already up" in cli("up").stdout

        status = cli("status")
        assert status.returncode == 0, status.stdout

        # A fresh stack answers predictions from the bootstrap model.
        serve = f"http://127.0.0.1:{ports['SIGNALOPS_SERVE_PORT']}"
        answer = httpx.post(
            f"{serve}/v1/predict", content=b'{"entity_id": "device-1"}', timeout=10
        ).json()
        assert answer["model"]["name"] == "default" and answer["model"]["version"] == "1"
        dashboard = f"http://127.0.0.1:{ports['SIGNALOPS_RAY_DASHBOARD_PORT']}"
        apps = httpx.get(f"{dashboard}/api/serve/applications/", timeout=10).json()
        assert "signalops" in apps["applications"]
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert stack.stack_processes() == []
    for name, value in ports.items():
        port = int(value.rsplit(":", 1)[-1].split("/")[0])
        assert not port_open(port), f"{name} port {port} still open after down"
