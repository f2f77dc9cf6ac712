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

import lightgbm as lgb
import numpy as np

from libs.common.clients.kafka import KafkaPublisher, KafkaRuntime, Subscription
from libs.common.clients.kafka.reader import read_to_end
from libs.common.definitions import load_definitions
from libs.common.features import model_columns
from libs.common.registry import DRIFT_REFERENCE, MlflowRegistry
from libs.common.schemas import DriftDetected, ModelRef, Outcome, PredictionMade, RetrainModel
from services.retrain.core.drift.reference import PREDICTION, DriftReference
from services.retrain.monitoring import DriftMonitorHandlers


async def test_concept_drift_on_the_broker_becomes_a_performance_event_and_a_refit(
    retrain_settings, kafka_bootstrap: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = retrain_settings(kafka_bootstrap=kafka_bootstrap)
    definitions = load_definitions(settings.definitions)
    model = definitions.models[0]
    columns = model_columns(model)
    rng = np.random.default_rng(3)

    # A version whose scores follow the first input, with its training reference.
    x = rng.normal(size=(4000, len(columns)))
    y = (x[:, 0] > 0).astype(float)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 7},
        lgb.Dataset(x, y, feature_name=columns),
        num_boost_round=20,
    )
    # Keyed 'view.feature' as training writes it and serve logs the inputs.
    reference = DriftReference.of(
        {**{f: x[:, i] for i, f in enumerate(model.features)}, PREDICTION: booster.predict(x)}
    )
    registry = MlflowRegistry.from_settings(settings)
    version = registry.register(
        model.name,
        booster,
        params={},
        metrics={},
        tags={},
        files={DRIFT_REFERENCE: reference.to_json()},
    )

    runtime = KafkaRuntime(settings, client_id="retrain")
    monitor = DriftMonitorHandlers(definitions, runtime, settings.topics, registry.read_file)
    t = settings.topics
    runtime.subscribe(
        Subscription(
            name="retrain monitor",
            topics={t.predictions: PredictionMade, t.outcomes: Outcome},
            handler=monitor.on_batch,
            group=f"monitor-{model.name}",
        )
    )
    await runtime.start()
    pub = KafkaPublisher(kafka_bootstrap, client_id="test-serve")
    await pub.start()
    t0 = datetime.now(UTC) - timedelta(hours=2)
    change = 3000
    try:
        rows = rng.normal(size=(4500, len(columns)))
        scores = booster.predict(rows)
        items = []
        for i, (row, score) in enumerate(zip(rows, scores, strict=True)):
            at = t0 + timedelta(seconds=i)
            p = PredictionMade(
                entity_id=f"e{i}",
                event_time=at,
                model=ModelRef(name=model.name, version=version, variant="champion"),
                score=float(score),
                features=dict(zip(model.features, row.tolist(), strict=True)),
            )
            label = float((row[0] > 0) != (i >= change))
            o = Outcome(
                model=model.name,
                entity_id=p.entity_id,
                label=label,
                prediction_id=p.event_id,
                event_time=at,
            )
            # One key: predictions and labels keep their order through the broker.
            items += [(t.predictions, p, "k"), (t.outcomes, o, "k")]
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
