"""`SIGNALOPS_FEATURES_WORKERS`: N service processes in one group, supervised.

The workers' Kafka side is the ordinary service (tests/integration/features); these
tests hold the parent's contract with stand-in child processes: distinct ops ports,
compaction on worker 0 only, a dead worker restarted, every worker stopped on stop.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from services.features import workers
from services.features.settings import FeaturesSettings


def test_each_worker_gets_its_own_ops_port_and_index() -> None:
    """Worker 0 keeps the service's port; the others take ports clear of retrain's."""
    settings = FeaturesSettings(features_workers=3)
    envs = [workers.worker_env(settings, i) for i in range(3)]
    ports = [int(e["SIGNALOPS_FEATURES_METRICS_PORT"]) for e in envs]
    assert ports == [settings.features_metrics_port, 8120, 8121]
    assert settings.retrain_metrics_port not in ports
    assert [e["SIGNALOPS_FEATURES_WORKER_INDEX"] for e in envs] == ["0", "1", "2"]
    assert {e["SIGNALOPS_FEATURES_WORKERS"] for e in envs} == {"1"}  # no grandchildren


def test_a_dead_worker_is_restarted_and_all_stop_on_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker 1 exits at once; the parent starts it again; stop ends every worker."""
    spawned: list[tuple[int, subprocess.Popen[bytes]]] = []

    def spawn(_: FeaturesSettings, index: int) -> subprocess.Popen[bytes]:
        # Worker 0 runs until stopped; worker 1 dies the first time only.
        dies = index == 1 and not any(i == 1 for i, _ in spawned)
        code = "pass" if dies else "import time; time.sleep(60)"
        proc = subprocess.Popen([sys.executable, "-c", code])
        spawned.append((index, proc))
        return proc

    monkeypatch.setattr(workers, "_spawn", spawn)
    stop = threading.Event()
    result: list[int] = []
    parent = threading.Thread(
        target=lambda: result.append(
            workers.run_workers(FeaturesSettings(features_workers=2), stop)
        )
    )
    parent.start()
    deadline = time.monotonic() + 20
    while sum(1 for i, _ in spawned if i == 1) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    parent.join(timeout=40)
    assert [i for i, _ in spawned] == [0, 1, 1]
    assert result == [0]
    assert all(p.poll() is not None for _, p in spawned)
