"""The drift monitor on the real broker and the real MLflow registry.

A version is registered with its drift reference; its predictions and their labels
travel through Kafka; after a concept drift (the labelling flips, the features do
not) the monitor publishes a performance drift event with the change point, then its refit.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from libs.common.clients.kafka import KafkaPublisher, KafkaRuntime
from libs.common.clients.kafka.reader import read_to_end
from libs.common.definitions import load_definitions
from libs.common.registry import MlflowRegistry
from libs.common.schemas import DriftDetected, RetrainModel
from services.retrain.monitoring import DriftMonitorHandlers
from tests.integration.retrain.concept_stream import ConceptStream


async def test_concept_drift_on_the_broker_becomes_a_performance_event_and_a_refit(
    retrain_settings, kafka_bootstrap: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = retrain_settings(kafka_bootstrap=kafka_bootstrap)
    definitions = load_definitions(settings.definitions)
    model = definitions.models[0]
    registry = MlflowRegistry.from_settings(settings)
    t = settings.topics
    t0 = datetime.now(UTC) - timedelta(hours=2)
    change = 3000
    stream = ConceptStream.register(registry, model, t, t0=t0, change=change, seed=3)
    version = stream.version

    runtime = KafkaRuntime(settings, client_id="retrain")
    monitor = DriftMonitorHandlers(definitions, runtime, t, registry.read_file)
    runtime.subscribe(monitor.subscription(group=f"monitor-{model.name}"))
    await runtime.start()
    pub = KafkaPublisher(kafka_bootstrap, client_id="test-serve")
    await pub.start()
    try:
        items = stream.rows(0, 4500)
        for start in range(0, len(items), 1000):
            await pub.publish_many(items[start : start + 1000])

        async def drift_events() -> list[DriftDetected]:
            return [
                DriftDetected.from_bytes(d.value)
                for d in await read_to_end(kafka_bootstrap, t.drift)
            ]

        async def retrain_requests() -> list[RetrainModel]:
            return [
                RetrainModel.from_bytes(d.value)
                for d in await read_to_end(kafka_bootstrap, t.retrain)
            ]

        deadline = time.monotonic() + 90
        while not (found := await drift_events()) or not await retrain_requests():
            state = monitor.monitors[model.name]
            assert time.monotonic() < deadline, (
                f"no drift event: {state.counts}, "
                f"{[(v, s.loss.labels, s.post_change) for v, s in state.versions.items()]}"
            )
            await asyncio.sleep(1.0)
        await asyncio.sleep(3.0)  # a duplicate, if any, would land now
        found = await drift_events()
        asks = await retrain_requests()
    finally:
        await pub.stop()
        await runtime.stop()
    # One drift event, then a retrain request once 1,200 labels since its change point
    # arrived (the refit on a larger window).
    assert [(e.kind, e.statistic) for e in found] == [("performance", "mann_whitney_log_loss")]
    event = found[0]
    assert (event.model, event.version) == (model.name, version)
    [refit] = asks
    assert (refit.model, refit.since, refit.requested_by) == (
        model.name,
        event.change_point,
        "drift-monitor",
    )
    assert event.change_point is not None
    estimated = (event.change_point - t0).total_seconds()
    assert abs(estimated - change) <= 100, estimated
    assert runtime.liveness() == []
