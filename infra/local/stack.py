"""The embedded local stack: Tansu, Redis, a Ray head with Serve, and the services.

`signalops up` starts what is not running yet, in dependency order, and waits for
each to answer; `down` stops everything it started, Ray's daemons and HAProxy
included (found by the stack's own Ray temp folder, RAY_NOTES.md).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from infra.local.processes import (
    ManagedProcess,
    kill_tree,
    processes_mentioning,
    wait_until,
)
from libs.common.binaries import redis_command, tansu_command
from libs.common.errors import SignalopsError
from libs.common.net import port_open
from libs.common.ray_env import serve_ingress_env
from libs.common.settings import Settings

BIN = Path(sys.executable).parent


class PortTaken(SignalopsError):
    """A port the stack needs is used by another program.

    Operator action: stop that program, or move the port with the SIGNALOPS_ variable named.
    """


class StartFailed(SignalopsError):
    """A component did not come up; its log file is named in the message."""


@dataclass(frozen=True)
class Component:
    name: str
    port: int
    port_variable: str
    health_url: str | None = None


def _port_of(url: str, default: int) -> int:
    parsed = urlparse(url if "://" in url else f"tcp://{url}")
    return parsed.port or default


class LocalStack:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.data_dir = settings.data_dir.resolve()
        self.run_dir = self.data_dir / "run"
        self.log_dir = self.data_dir / "logs"
        # Short and unique per data dir: Ray's socket paths must stay under 107 bytes.
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:8]
        self.ray_temp = Path(f"/tmp/signalops-ray-{digest}")
        self.kafka_port = _port_of(settings.kafka_bootstrap, 9092)
        self.redis_port = _port_of(settings.redis_url, 6379)
        s = settings
        self.components = [
            Component("kafka", self.kafka_port, "SIGNALOPS_KAFKA_BOOTSTRAP"),
            Component("redis", self.redis_port, "SIGNALOPS_REDIS_URL"),
            Component(
                "ray",
                s.ray_head_port,
                "SIGNALOPS_RAY_HEAD_PORT",
                f"http://127.0.0.1:{s.ray_dashboard_port}/api/version",
            ),
            Component(
                "serve",
                s.serve_port,
                "SIGNALOPS_SERVE_PORT",
                f"http://{s.serve_host}:{s.serve_port}/healthz",
            ),
            Component(
                "ingest",
                s.ingest_port,
                "SIGNALOPS_INGEST_PORT",
                f"http://{s.ingest_host}:{s.ingest_port}/readyz",
            ),
            Component(
                "features",
                s.features_metrics_port,
                "SIGNALOPS_FEATURES_METRICS_PORT",
                f"http://127.0.0.1:{s.features_metrics_port}/healthz",
            ),
            Component(
                "retrain",
                s.retrain_metrics_port,
                "SIGNALOPS_RETRAIN_METRICS_PORT",
                f"http://127.0.0.1:{s.retrain_metrics_port}/healthz",
            ),
        ]

    # helpers ---------------------------------------------------------------------------
    def proc(self, name: str) -> ManagedProcess:
        return ManagedProcess(name, self.run_dir, self.log_dir)

    def env(self) -> dict[str, str]:
        """The environment every component gets: settings made explicit and absolute."""
        s = self.s
        env = dict(os.environ)
        env.update(
            {
                "SIGNALOPS_DATA_DIR": str(self.data_dir),
                "SIGNALOPS_DEFINITIONS": str(s.definitions.resolve()),
                "SIGNALOPS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
                "SIGNALOPS_REDIS_URL": s.redis_url,
                "SIGNALOPS_RAY_ADDRESS": f"127.0.0.1:{s.ray_head_port}",
                "SIGNALOPS_MLFLOW_TRACKING_URI": s.tracking_uri,
                "PYTHONUNBUFFERED": "1",
            }
        )
        # One replica is enough on a laptop: model swaps happen inside the replica.
        env.setdefault("SIGNALOPS_SERVE_NUM_REPLICAS", "1")
        return env

    def running(self, name: str) -> bool:
        if name == "serve":
            return self.proc("ray").pid() is not None and port_open(self.s.serve_port)
        return self.proc(name).pid() is not None

    def healthy(self, c: Component) -> bool:
        if c.health_url is None:
            return port_open(c.port)
        try:
            return httpx.get(c.health_url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def is_up(self) -> bool:
        return all(self.running(c.name) for c in self.components)

    def check_ports(self) -> None:
        """Fail before starting anything if a port we need is someone else's."""
        for c in self.components:
            if not self.running(c.name) and port_open(c.port):
                raise PortTaken(
                    f"port {c.port} for {c.name} is taken by another program; "
                    f"stop it or set {c.port_variable}"
                )
        if not self.running("ray") and port_open(self.s.ray_dashboard_port):
            raise PortTaken(
                f"port {self.s.ray_dashboard_port} for the Ray dashboard is taken; "
                "stop it or set SIGNALOPS_RAY_DASHBOARD_PORT"
            )

    def _await(self, name: str, ok: Callable[[], bool], timeout_s: float) -> None:
        if not wait_until(ok, timeout_s):
            raise StartFailed(
                f"{name} did not become ready in {timeout_s:.0f}s; see {self.proc(name).log_file}"
            )

    # start ------------------------------------------------------------------------------
    def start_kafka(self) -> None:
        self.proc("kafka").start(tansu_command(self.kafka_port), self.env())
        self._await("kafka", lambda: port_open(self.kafka_port), 30)

    def start_redis(self) -> None:
        workdir = self.data_dir / "redis"
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc("redis").start(
            redis_command(self.redis_port, str(workdir), maxmemory_mb=256), self.env()
        )
        self._await("redis", lambda: port_open(self.redis_port), 30)

    def start_ray(self) -> None:
        s = self.s
        env = self.env()
        env.update(
            serve_ingress_env(
                drain_s=2,
                haproxy_metrics_port=s.haproxy_metrics_port,
                haproxy_stats_port=s.haproxy_stats_port,
            )
        )
        # Laptop sizing (issue: under 3 GiB idle): no prestarted or lingering idle
        # workers; Ray Data's tasks start workers on demand and they exit when idle.
        env.setdefault("RAY_prestart_worker_first_driver", "0")
        env.setdefault("RAY_num_workers_soft_limit", "0")
        # Ray starts workers (the Serve replica, and HAProxy under its manager) at nice
        # 15: on a shared laptop every other process, wrk included, then took the CPU
        # first and predict's p99 went past 200 ms (issue 8, docs/benchmarks.md).
        env.setdefault("RAY_worker_niceness", "0")
        self.proc("ray").start(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={s.ray_head_port}",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={s.ray_dashboard_port}",
                "--num-cpus=4",
                f"--object-store-memory={s.ray_object_store_mb * 1024**2}",
                f"--temp-dir={self.ray_temp}",
                "--disable-usage-stats",
            ],
            env,
        )
        self._await("ray", lambda: self.healthy(self.components[2]), 90)

    def start_serve(self) -> None:
        log = self.proc("serve").log_file
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            done = subprocess.run(
                [sys.executable, "-m", "services.serve.main"],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=300,
                check=False,
            )
        if done.returncode != 0:
            raise StartFailed(f"deploying the Serve application failed; see {log}")
        self._await("serve", lambda: self.healthy(self.components[3]), 60)

    def start_service(self, name: str) -> None:
        self.proc(name).start([sys.executable, "-m", f"services.{name}.main"], self.env())
        comp = next(c for c in self.components if c.name == name)
        self._await(name, lambda: self.healthy(comp), 120)

    def up(self, on_step: Callable[[str], None] = lambda _: None) -> list[str]:
        """Start every component not yet running; returns the names started."""
        self.check_ports()
        starters: dict[str, Callable[[], None]] = {
            "kafka": self.start_kafka,
            "redis": self.start_redis,
            "ray": self.start_ray,
            "serve": self.start_serve,
            "ingest": lambda: self.start_service("ingest"),
            "features": lambda: self.start_service("features"),
            "retrain": lambda: self.start_service("retrain"),
        }
        started = []
        for c in self.components:
            if self.running(c.name):
                continue
            on_step(c.name)
            starters[c.name]()
            started.append(c.name)
        on_step("waiting for the first models (bootstrap training)")
        wait_until(self.models_served, 240, interval_s=1.0)
        return started

    def models_served(self) -> bool:
        """True once serve answers every model with a registered version, not the fallback."""
        url = f"http://{self.s.serve_host}:{self.s.serve_port}/v1/models"
        try:
            models = httpx.get(url, timeout=2.0).json().get("models", [])
        except (httpx.HTTPError, ValueError):
            return False
        return bool(models) and all(m.get("version") for m in models)

    # stop -------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop services first, then Ray (and its HAProxy), Redis, Kafka."""
        stopped = []
        for name in ["retrain", "features", "ingest", "ray", "redis", "kafka"]:
            if self.proc(name).stop():
                stopped.append(name)
        leftovers = processes_mentioning(str(self.ray_temp))
        if leftovers:
            kill_tree([p.pid for p in leftovers], grace_s=5)
            if "ray" not in stopped:
                stopped.append("ray")
        return stopped

    def status(self) -> list[tuple[Component, bool, bool]]:
        return [(c, self.running(c.name), self.healthy(c)) for c in self.components]

    def stack_processes(self) -> list[int]:
        """Pids of every process of the stack (for the memory benchmark)."""
        import psutil

        pids: set[int] = set()
        for name in ["kafka", "redis", "ray", "ingest", "features", "retrain"]:
            pid = self.proc(name).pid()
            if pid is None:
                continue
            pids.add(pid)
            try:
                pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        pids.update(p.pid for p in processes_mentioning(str(self.ray_temp)))
        return sorted(pids)
