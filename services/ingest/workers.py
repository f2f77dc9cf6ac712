"""Several ingest processes behind one port on one machine.

One ingest process keeps one core busy (docs/benchmarks.md, "Ingest throughput"), so
`SIGNALOPS_INGEST_WORKERS=N` starts N ordinary ingest processes. The parent binds
ingest_port once and every worker accepts on that one listening socket: a worker
busy with a batch is not waiting in accept, so new connections go to the others
(SO_REUSEPORT would instead hash each connection to a fixed worker, however busy).
The workers share the consumer group of signals.raw (each takes its share of the
partitions), the dedup window and replay ledger in Redis, and the broker; each has its
own outage spool (worker 0 the configured directory, worker i `worker-<i>` in it) and
its own ops port for /metrics (`ingest_worker_ports_from + i`). Worker 0 alone polls
the polled sources. The parent supervises (libs/common/workers.py) and restarts a dead
worker with its index, so it recovers its own spool.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

from libs.common.workers import supervise
from services.ingest.settings import IngestSettings


def listening_socket(host: str, port: int) -> socket.socket:
    """ingest_port bound and listening, inheritable by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def worker_env(settings: IngestSettings, index: int, fd: int) -> dict[str, str]:
    """The environment of worker `index`: the parent's, as one worker of the socket `fd`."""
    return {
        **os.environ,
        "SIGNALOPS_INGEST_WORKERS": "1",  # no grandchildren
        "SIGNALOPS_INGEST_WORKER_INDEX": str(index),
        "SIGNALOPS_INGEST_LISTEN_FD": str(fd),
        "SIGNALOPS_INGEST_WORKER_PORTS_FROM": str(settings.ingest_worker_ports_from),
    }


def _spawn(settings: IngestSettings, index: int, fd: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.ingest.main"],
        env=worker_env(settings, index, fd),
        pass_fds=(fd,),
    )


def run_workers(settings: IngestSettings, stop: threading.Event | None = None) -> int:
    """Bind ingest_port, run `settings.ingest_workers` workers on it until `stop`
    (SIGTERM/SIGINT); the exit code."""
    sock = listening_socket(settings.ingest_host, settings.ingest_port)
    try:
        return supervise(
            "ingest",
            lambda index: _spawn(settings, index, sock.fileno()),
            settings.ingest_workers,
            stop,
        )
    finally:
        sock.close()
