"""The local stack refuses to start on a port another program holds."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from infra.local.stack import LocalStack, PortTaken
from libs.common.net import free_port
from libs.common.settings import Settings


def test_taken_port_is_a_clear_error_naming_the_variable(tmp_path: Path) -> None:
    """A listener on the ingest port stops `up` before anything starts."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        settings = Settings(
            data_dir=tmp_path,
            ingest_port=taken,
            kafka_bootstrap=f"127.0.0.1:{free_port()}",
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            ray_head_port=free_port(),
            ray_dashboard_port=free_port(),
            serve_port=free_port(),
            features_metrics_port=free_port(),
            retrain_metrics_port=free_port(),
        )
        with pytest.raises(PortTaken, match=f"port {taken} for ingest .*SIGNALOPS_INGEST_PORT"):
            LocalStack(settings).check_ports()
    assert not (tmp_path / "run").exists()
