"""A restarted drift monitor rebuilds its windows from the log (real broker, MLflow).

The monitor keeps its state in memory. At start it re-reads the newest records of
predictions and outcomes, so a concept drift that began before a restart is caught
after it as soon as it would have been without the restart.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.common.clients.kafka import KafkaPublisher, KafkaRuntime
from libs.common.clients.kafka.reader import read_to_end
from libs.common.definitions import load_definitions
from libs.common.registry import MlflowRegistry
from libs.common.schemas import DriftDetected
from services.retrain.monitoring import DriftMonitorHandlers
from tests.integration.retrain.concept_stream import ConceptStream

CHANGE = 1500


async def _monitor(settings: Any, registry: MlflowRegistry, group: str) -> tuple[Any, Any]:
    definitions = load_definitions(settings.definitions)
    runtime = KafkaRuntime(settings, client_id="retrain")
    monitor = DriftMonitorHandlers(definitions, runtime, settings.topics, registry.read_file)
    runtime.subscribe(monitor.subscription(group=group))
    await runtime.start()
    return runtime, monitor


async def _judged(monitor: DriftMonitorHandlers, model: str, n: int) -> None:
    deadline = time.monotonic() + 60
    while monitor.monitors[model].counts.joined < n:
        assert time.monotonic() < deadline, monitor.monitors[model].counts
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("warm_up", [True, False], ids=["warm_up", "cold_start_control"])
async def test_restarted_monitor_catches_a_drift_begun_before_the_restart(
    retrain_settings, kafka_bootstrap: str, warm_up: bool
) -> None:  # type: ignore[no-untyped-def]
    """Warm: the alarm comes 450 labels after the change although only 250 came after
    the restart. Control (no warm-up): the restarted monitor has no pre-change losses
    to compare with and stays silent, so the test above cannot pass by accident."""
    settings = retrain_settings(kafka_bootstrap=kafka_bootstrap)
    model = load_definitions(settings.definitions).models[0]
    registry = MlflowRegistry.from_settings(settings)
    t = settings.topics
    t0 = datetime.now(UTC) - timedelta(hours=2)
    stream = ConceptStream.register(registry, model, t, t0=t0, change=CHANGE, seed=4)
    version, rows = stream.version, stream.rows

    pub = KafkaPublisher(kafka_bootstrap, client_id="test-serve")
    await pub.start()
    group = f"monitor-{model.name}"
    try:
        # 1. The first monitor judges 3,000 rows before the change and 200 after, then dies.
        runtime, first = await _monitor(settings, registry, group)
        for start in range(0, CHANGE + 200, 500):
            await pub.publish_many(rows(start, min(500, CHANGE + 200 - start)))
        await _judged(first, model.name, CHANGE + 200)
        await runtime.stop()
        drift = [
            DriftDetected.from_bytes(d.value) for d in await read_to_end(kafka_bootstrap, t.drift)
        ]
        assert drift == []

        # 2. A new monitor starts (warm or cold) and 250 more labels come.
        runtime, second = await _monitor(settings, registry, group)
        if warm_up:
            fed = await second.warm_up(kafka_bootstrap, 10_000)
            assert fed == 2 * (CHANGE + 200)
        await pub.publish_many(rows(CHANGE + 200, 250))
        await _judged(second, model.name, (CHANGE + 450) if warm_up else 250)
        await asyncio.sleep(2.0)
        drift = [
            DriftDetected.from_bytes(d.value) for d in await read_to_end(kafka_bootstrap, t.drift)
        ]
        await runtime.stop()
    finally:
        await pub.stop()
    if warm_up:
        assert [(e.kind, e.version) for e in drift] == [("performance", version)]
        assert drift[0].change_point is not None
        assert abs((drift[0].change_point - t0).total_seconds() - CHANGE) <= 100
    else:
        assert drift == []
