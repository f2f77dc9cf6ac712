"""Several features processes in one consumer group on one machine.

One process keeps one core busy (docs/benchmarks.md, "Features service"), so
`SIGNALOPS_FEATURES_WORKERS=N` starts N ordinary service processes; the consumer
group gives each its share of the partitions, and the state lives in Redis, so any
worker can take over any partition. Each worker has its own ops port (worker 0 on
`features_metrics_port`, worker i on `features_worker_ports_from + i - 1`); only
worker 0 compacts the offline store. The parent supervises (libs/common/workers.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from libs.common.workers import supervise
from services.features.settings import FeaturesSettings


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
    """Run `settings.features_workers` workers until `stop` (SIGTERM/SIGINT); the exit
    code (libs/common/workers.py supervises)."""
    return supervise(
        "features", lambda index: _spawn(settings, index), settings.features_workers, stop
    )
