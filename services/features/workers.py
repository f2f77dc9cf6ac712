"""Several features processes in one consumer group on one machine.

One process keeps one core busy (docs/benchmarks.md, "Features service"), so
`SIGNALOPS_FEATURES_WORKERS=N` starts N ordinary service processes; the consumer
group gives each its share of the partitions, and the state lives in Redis, so any
worker can take over any partition. Each worker has its own ops port (worker 0 on
`features_metrics_port`, worker i on `features_worker_ports_from + i - 1`); only
worker 0 compacts the offline store. The parent forwards SIGTERM/SIGINT and restarts
a worker that dies, with backoff, like the consume loop restarts a loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from libs.common.observability import get_logger
from services.features.settings import FeaturesSettings

log = get_logger(__name__)

_STOP_GRACE_S = 30.0
_MAX_RESTARTS = 5  # within _RESTART_WINDOW_S; then the parent stops and fails
_RESTART_WINDOW_S = 300.0


def worker_env(settings: FeaturesSettings, index: int) -> dict[str, str]:
    """The environment of worker `index`: the parent's, as one worker with its port."""
    port = (
        settings.features_metrics_port
        if index == 0
        else settings.features_worker_ports_from + index - 1
    )
    return {
        **os.environ,
        "SIGNALOPS_FEATURES_WORKERS": "1",
        "SIGNALOPS_FEATURES_WORKER_INDEX": str(index),
        "SIGNALOPS_FEATURES_METRICS_PORT": str(port),
    }


def _spawn(settings: FeaturesSettings, index: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.features.main"], env=worker_env(settings, index)
    )


def run_workers(settings: FeaturesSettings, stop: threading.Event | None = None) -> int:
    """Run `settings.features_workers` workers until `stop` (SIGTERM/SIGINT); the exit code.

    A worker that exits while not stopping is restarted after a backoff; more than
    `_MAX_RESTARTS` in five minutes stop them all with exit code 1 (the supervisor of
    the parent, systemd or Kubernetes, takes over).
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    n = settings.features_workers
    procs = [_spawn(settings, i) for i in range(n)]
    log.info("features_workers_started", workers=n, pids=[p.pid for p in procs])
    restarts: list[float] = []
    code = 0
    try:
        while not stop.wait(0.5):
            for i, proc in enumerate(procs):
                if proc.poll() is None:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < _RESTART_WINDOW_S] + [now]
                log.error("features_worker_exited", worker=i, code=proc.returncode)
                if len(restarts) > _MAX_RESTARTS:
                    code = 1
                    stop.set()
                    break
                time.sleep(min(10.0, 0.5 * 2 ** len(restarts)))
                procs[i] = _spawn(settings, i)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()  # its uncommitted batch is delivered again
                proc.wait()
    return code
