"""Several processes of one service on one machine, supervised by a parent.

One Python process keeps one core busy, so features and ingest can run N ordinary
service processes (SIGNALOPS_FEATURES_WORKERS, SIGNALOPS_INGEST_WORKERS). The parent
only supervises: it forwards SIGTERM/SIGINT and restarts a worker that dies, with
backoff, like the consume loop restarts a loop; more than `MAX_RESTARTS` within
`RESTART_WINDOW_S` stop them all with exit code 1 (the supervisor of the parent,
systemd or Kubernetes, takes over).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable

from libs.common.observability import get_logger

log = get_logger(__name__)

STOP_GRACE_S = 30.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0

Spawn = Callable[[int], subprocess.Popen[bytes]]
"""Starts worker `index` (the same index again when it is restarted)."""


def supervise(service: str, spawn: Spawn, workers: int, stop: threading.Event | None = None) -> int:
    """Run `workers` processes made by `spawn` until `stop` (SIGTERM/SIGINT); the exit code."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    procs = [spawn(i) for i in range(workers)]
    log.info("workers_started", service=service, workers=workers, pids=[p.pid for p in procs])
    restarts: list[float] = []
    code = 0
    try:
        while not stop.wait(0.5):
            for i, proc in enumerate(procs):
                if proc.poll() is None:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
                log.error("worker_exited", service=service, worker=i, code=proc.returncode)
                if len(restarts) > MAX_RESTARTS:
                    code = 1
                    stop.set()
                    break
                time.sleep(min(10.0, 0.5 * 2 ** len(restarts)))
                procs[i] = spawn(i)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()  # a Kafka consumer's uncommitted batch is delivered again
                proc.wait()
    return code
