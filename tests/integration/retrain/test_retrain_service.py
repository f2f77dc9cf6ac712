"""The retrain service on the real broker: outcomes logged, requests trained, facts published."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from libs.common.clients.kafka import KafkaPublisher
from libs.common.definitions import load_definitions
from libs.common.offline import OUTCOMES, SIGNALS, OfflineStore
from libs.common.registry import MlflowRegistry
from libs.common.schemas import DeadLetter, ModelChanged, Outcome, RetrainModel
from services.retrain import main as retrain_main
from services.retrain.bootstrap import write_synthetic_history
from services.retrain.main import TRAINER_GROUP, build_app


async def wait_for(predicate: Callable[[], Awaitable[Any]], timeout_s: float) -> Any:
    """Poll `predicate` until it returns something truthy; TimeoutError after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (result := await predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s:.0f}s")
        await asyncio.sleep(0.2)
    return result


async def test_retrain_request_on_the_broker_ends_as_a_model_event(
    kafka_bootstrap: str,
    retrain_settings,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outcomes from the broker reach the offline store; a RetrainModel yields ModelChanged.

    Faults on the way: the training outlasts max_poll_interval (1 s here), an undecodable
    record and an unknown model sit on retrain.requests, and the request is delivered
    again after it was answered. One version per request, each poison record
    dead-lettered once, every record committed, no crash loop.
    """
    settings = retrain_settings(kafka_bootstrap=kafka_bootstrap, consumer_max_poll_interval_ms=1000)
    name = load_definitions(settings.definitions).models[0].name
    # Training on 1,000 rows takes well under a second now: hold each run for 2 s so it
    # outlasts max_poll_interval for certain.
    real_train = retrain_main.train_model

    def slow_train(*args: Any, **kwargs: Any) -> Any:
        time.sleep(2.0)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(retrain_main, "train_model", slow_train)
    topics = settings.topics

    # Signals as the features service would have written them; their outcomes travel
    # through the broker like real labels.
    generated = OfflineStore(tmp_path / "generated")
    write_synthetic_history(
        generated,
        load_definitions(settings.definitions),
        name,
        entities=20,
        steps=50,
        step_s=30.0,
        seed=14,
    )
    OfflineStore(settings.offline_dir).append(
        SIGNALS, generated.read(SIGNALS).to_pylist(), name=f"{topics.valid}-0-0"
    )
    outcomes = [
        Outcome(
            model=r["model"],
            entity_id=r["entity_id"],
            label=r["label"],
            event_time=datetime.fromtimestamp(r["ts"], UTC),
            event_id=r["event_id"],
        )
        for r in generated.read(OUTCOMES).to_pylist()
    ]

    # Start the service as main() does (bootstrap included), then feed it.
    app = build_app(settings)
    stop = asyncio.Event()
    service = asyncio.create_task(app.run(stop))
    publisher = KafkaPublisher(kafka_bootstrap, client_id="test-retrain")
    await publisher.start()
    models = AIOKafkaConsumer(
        topics.models,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    dlq = AIOKafkaConsumer(
        topics.dlq, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=None
    )
    try:
        await publisher.publish_many([(topics.outcomes, o, o.entity_id) for o in outcomes])
        store = OfflineStore(settings.offline_dir)

        async def all_outcomes_logged() -> bool:
            return store.read(OUTCOMES).num_rows == len(outcomes)

        await wait_for(all_outcomes_logged, timeout_s=120)
        request = RetrainModel(model=name, reason="from test")
        requested_at = asyncio.get_running_loop().time()
        await publisher.publish(topics.retrain, request, key=name)
        await publisher.publish(
            topics.retrain, RetrainModel(model="no_such_model"), key="no_such_model"
        )
        await publisher.publish_raw(topics.retrain, b'{"model": 42}', key=name)

        # Bootstrap announced version 1; the request leads to version 2.
        await models.start()
        seen: list[ModelChanged] = []

        async def version_2_promoted() -> bool:
            for records in (await models.getmany(timeout_ms=200)).values():
                seen.extend(ModelChanged.from_bytes(r.value) for r in records)
            return any(m.kind == "promoted" and m.version == "2" for m in seen)

        await wait_for(version_2_promoted, timeout_s=180)
        # The run took longer than max_poll_interval, so the pause-and-poll kept the group.
        assert asyncio.get_running_loop().time() - requested_at > 2.0
        assert [(m.kind, m.version, m.reason) for m in seen] == [
            ("registered", "1", "bootstrap"),
            ("promoted", "1", "bootstrap"),
            ("registered", "2", "from test"),
            ("promoted", "2", "from test"),
        ]
        assert seen[-1].alias == "champion"
        assert seen[-1].metrics["rows"] == len(outcomes)
        assert MlflowRegistry.from_settings(settings).champion_version(name) == "2"

        await dlq.start()
        dead_letters: list[DeadLetter] = []

        async def dead_letter_arrived() -> bool:
            for records in (await dlq.getmany(timeout_ms=200)).values():
                dead_letters.extend(DeadLetter.from_bytes(r.value) for r in records)
            return bool(dead_letters)

        async def two_dead_letters() -> bool:
            await dead_letter_arrived()
            return len(dead_letters) >= 2

        await wait_for(two_dead_letters, timeout_s=60)
        assert sorted((d.reason, d.source) for d in dead_letters) == [
            ("invalid_message", topics.retrain),
            ("unknown_model", topics.retrain),
        ]

        # The same request again (a redelivery after a crash or a rebalance): answered.
        await publisher.publish(topics.retrain, request, key=name)
        registry = MlflowRegistry.from_settings(settings)

        async def redelivery_committed() -> bool:
            return await _committed(kafka_bootstrap, topics.retrain, settings.kafka_partitions) == 4

        await wait_for(redelivery_committed, timeout_s=60)
        assert registry.version_for_request(name, request.event_id) == "2"
        assert [v.version for v in registry.list_versions(name)] == ["2", "1"]
        assert app.kafka.liveness() == []
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=60)
        await publisher.stop()
        await models.stop()
        await dlq.stop()

    # Every request was committed: a poison request does not come back after a restart.
    assert await _committed(kafka_bootstrap, topics.retrain, settings.kafka_partitions) == 4


async def _committed(bootstrap: str, topic: str, partitions: int) -> int:
    probe = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=TRAINER_GROUP, enable_auto_commit=False
    )
    await probe.start()
    try:
        return sum(
            [(await probe.committed(TopicPartition(topic, p))) or 0 for p in range(partitions)]
        )
    finally:
        await probe.stop()
