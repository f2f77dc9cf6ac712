"""Several ingest processes behind one port on one machine.

One ingest process keeps one core busy (docs/benchmarks.md, "Ingest throughput"), so
`SIGNALOPS_INGEST_WORKERS=N` starts N ordinary ingest processes. Each worker binds
ingest_port with SO_REUSEPORT and the kernel spreads new connections over them. One
socket shared by all workers was tried first and measured worse: asyncio accepts every
pending connection at each wake-up, so a burst of connections (a client pool opening)
all went to one worker while the other idled (docs/benchmarks.md).

The workers share the consumer group of signals.raw (each takes its share of the
partitions), the dedup window and replay ledger in Redis, and the broker. Each has its
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


def shared_port_socket(host: str, port: int) -> socket.socket:
    """A worker's listening socket on ingest_port, beside the other workers' (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker_env(settings: IngestSettings, index: int) -> dict[str, str]:
    """The environment of worker `index`: the parent's, as one worker with its index."""
    return {
        **os.environ,
        "SIGNALOPS_INGEST_WORKERS": "1",  # no grandchildren
        "SIGNALOPS_INGEST_WORKER_INDEX": str(index),
        "SIGNALOPS_INGEST_WORKER_PORTS_FROM": str(settings.ingest_worker_ports_from),
    }


def _spawn(settings: IngestSettings, index: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.ingest.main"], env=worker_env(settings, index)
    )


def run_workers(settings: IngestSettings, stop: threading.Event | None = None) -> int:
    """Run `settings.ingest_workers` workers on ingest_port until `stop` (SIGTERM/SIGINT);
    the exit code."""
    return supervise("ingest", lambda index: _spawn(settings, index), settings.ingest_workers, stop)
