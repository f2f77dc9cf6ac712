"""Issue 6's acceptance streams on the real retrain service (monitor, trainer, offline
log) with the real broker, MLflow and Ray.

The test plays serve: it scores each row with the registry's current champion (as
serve does after a model event), publishes the prediction with the inputs it used and
then the row's label naming it. It waits, after each chunk, until the monitor has
judged every label published, so "labels after the change" are counted exactly; the
trainer runs concurrently, as it does in production, while the stream goes on at a
paced rate (`RATE` rows per second).

The world: six standard-normal inputs; the label is a linear concept of two of them.
An abrupt concept drift swaps the concept (the inputs keep their distributions); a
covariate drift shifts two inputs (the concept stays).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import yaml
from prometheus_client import REGISTRY

from libs.common.clients.kafka import KafkaPublisher
from libs.common.clients.kafka.reader import read_to_end
from libs.common.definitions import Definitions, load_definitions
from libs.common.features import model_columns
from libs.common.registry import DRIFT_REFERENCE, MlflowRegistry
from libs.common.schemas import DriftDetected, ModelRef, Outcome, PredictionMade, RetrainModel
from services.retrain.core.dataset import LABEL, TS
from services.retrain.core.training import train_booster
from services.retrain.main import RetrainApp, build_app
from services.retrain.settings import RetrainSettings
from services.retrain.train import drift_reference

INPUTS = [f"x{i}" for i in range(6)]
CHUNK = 50
LABELS = "signalops_monitor_labels"  # the monitor's gauge of labels joined, in-process
RATE = 200.0  # rows per second: a model retrained in seconds serves within ~2,000 rows

Concept = Callable[[np.ndarray], np.ndarray]


def before(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] + 0.5 * x[:, 1] > 0).astype(float)


def after(x: np.ndarray) -> np.ndarray:
    return (x[:, 2] - 0.5 * x[:, 3] > 0).astype(float)


def _definitions(tmp_path: Path) -> Path:
    """A source of six numeric inputs, a view of their last values, one binary model."""
    data = {
        "sources": [
            {
                "name": "world",
                "entity": "thing",
                "fields": {name: {"type": "float"} for name in INPUTS},
            }
        ],
        "feature_views": [
            {
                "name": "w",
                "source": "world",
                "features": [{"name": n, "field": n, "agg": "last"} for n in INPUTS],
            }
        ],
        "models": [
            {
                "name": "acc",
                "features": [f"w.{n}" for n in INPUTS],
                "num_boost_round": 60,
                "lightgbm": {"objective": "binary", "num_leaves": 15, "learning_rate": 0.1},
            }
        ],
    }
    path = tmp_path / "acceptance.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Played:
    """What the stream saw: per row, the version that answered, its score and the label."""

    versions: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    served_from: dict[str, int] = field(default_factory=dict)  # version -> first row

    def accuracy(self, lo: int, hi: int) -> float:
        s = np.asarray(self.scores[lo:hi])
        y = np.asarray(self.labels[lo:hi])
        return float(np.mean((s >= 0.5) == (y >= 0.5)))


class World:
    """The stream and the serve stand-in around one running retrain service."""

    def __init__(
        self,
        settings: RetrainSettings,
        definitions: Definitions,
        publisher: KafkaPublisher,
        registry: MlflowRegistry,
    ) -> None:
        self.settings = settings
        self.model = definitions.models[0]
        self.publisher = publisher
        self.registry = registry
        self.rng = np.random.default_rng(17)
        self.played = Played()
        self._booster: lgb.Booster | None = None
        self._version: str | None = None
        self._published = 0
        self.rate = RATE
        self.started_at = datetime.now(UTC)

    def champion(self) -> tuple[str, lgb.Booster]:
        """The champion serve would answer with now (reloaded when the alias moved)."""
        version = self.registry.champion_version(self.model.name)
        assert version is not None, "no champion"
        if version != self._version:
            self._booster = self.registry.load_booster(self.model.name, version)
            self._version = version
            self.played.served_from.setdefault(version, len(self.played.labels))
        assert self._booster is not None
        return version, self._booster

    async def play(
        self,
        rows: int,
        concept: Concept,
        *,
        shift: dict[int, float] | None = None,
        chunk: int = CHUNK,
    ) -> None:
        """Serve and label `rows` rows, paced at RATE, each chunk judged by the monitor."""
        t = self.settings.topics
        for _ in range(0, rows, chunk):
            started = time.monotonic()
            x = self.rng.normal(size=(chunk, len(INPUTS)))
            for column, by in (shift or {}).items():
                x[:, column] += by
            y = concept(x)
            version, booster = self.champion()
            scores = booster.predict(x)
            now = datetime.now(UTC)
            items: list[tuple[str, Any, str]] = []
            for i in range(chunk):
                entity = f"t{self._published + i}"
                p = PredictionMade(
                    entity_id=entity,
                    event_time=now,
                    model=ModelRef(name=self.model.name, version=version, variant="champion"),
                    score=float(scores[i]),
                    features=dict(zip(self.model.features, x[i].tolist(), strict=True)),
                )
                o = Outcome(
                    model=self.model.name,
                    entity_id=entity,
                    label=float(y[i]),
                    prediction_id=p.event_id,
                    event_time=now,
                )
                items += [(t.predictions, p, entity), (t.outcomes, o, entity)]
            await self.publisher.publish_many(items)
            self._published += chunk
            self.played.versions += [version] * chunk
            self.played.scores += scores.tolist()
            self.played.labels += y.tolist()
            await self._judged()
            await asyncio.sleep(max(0.0, chunk / self.rate - (time.monotonic() - started)))

    async def _judged(self, timeout_s: float = 60.0) -> None:
        """Wait until the monitor joined every label published so far."""
        deadline = time.monotonic() + timeout_s
        labels = {"model": self.model.name, "how": "joined"}
        while (judged := REGISTRY.get_sample_value(LABELS, labels) or 0.0) < self._published:
            assert time.monotonic() < deadline, f"monitor judged {judged} labels"
            await asyncio.sleep(0.05)

    async def drift_events(self) -> list[DriftDetected]:
        records = await read_to_end(self.settings.kafka_bootstrap, self.settings.topics.drift)
        return [DriftDetected.from_bytes(r.value) for r in records]


def register_first_champion(settings: RetrainSettings, definitions: Definitions) -> str:
    """Version 1, trained on 4,000 rows of the first concept with its drift reference."""
    model = definitions.models[0]
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, len(INPUTS)))
    frame = pd.DataFrame(x, columns=model_columns(model))
    frame[LABEL] = before(x)
    frame[TS] = np.arange(len(frame), dtype=float)
    trained = train_booster(frame, model)
    registry = MlflowRegistry.from_settings(settings)
    version = registry.register(
        model.name,
        trained.booster,
        params=trained.params,
        metrics=trained.metrics.as_dict(),
        tags={"reason": "acceptance: first champion"},
        files={DRIFT_REFERENCE: drift_reference(trained, frame, model).to_json()},
    )
    registry.promote(model.name, version)
    return version


@pytest.fixture(name="world")
async def _world(
    retrain_settings: Callable[..., RetrainSettings], kafka_bootstrap: str, tmp_path: Path
) -> AsyncIterator[World]:
    settings = retrain_settings(
        str(_definitions(tmp_path)), kafka_bootstrap=kafka_bootstrap, bootstrap_enabled=False
    )
    definitions = load_definitions(settings.definitions)
    register_first_champion(settings, definitions)
    registry = MlflowRegistry.from_settings(settings)
    app: RetrainApp = build_app(settings, registry=registry)
    stop = asyncio.Event()
    running = asyncio.create_task(app.run(stop))
    publisher = KafkaPublisher(kafka_bootstrap, client_id="acceptance-serve")
    await publisher.start()
    try:
        deadline = time.monotonic() + 60
        while (why := await app.kafka.ready()) is not None:
            assert not running.done(), running
            assert time.monotonic() < deadline, f"retrain service not ready: {why}"
            await asyncio.sleep(0.2)
        yield World(settings, definitions, publisher, registry)
        assert app.kafka.liveness() == []
    finally:
        await publisher.stop()
        stop.set()
        await asyncio.wait_for(running, 60)


async def test_stationary_stream_of_50000_labelled_rows_raises_no_drift(world: World) -> None:
    """50,000 labelled rows of an unchanged world: no drift event of any kind."""
    world.rate = 1e9  # nothing to retrain: as fast as the monitor judges
    await world.play(50_000, before, chunk=1000)
    await asyncio.sleep(2.0)  # an event found in the last batch would land now
    assert await world.drift_events() == []
    assert set(world.played.served_from) == {"1"}
    assert world.played.accuracy(0, 50_000) >= 0.95


async def test_concept_drift_is_caught_within_500_labels_and_accuracy_recovers(
    world: World,
) -> None:
    """After the concept swaps (inputs unchanged), a performance alarm comes within 500
    labels, a new version serves, and accuracy over labels 2,000-10,000 after the
    change is within 3 points of the accuracy before it."""
    # 1. The world as version 1 learnt it.
    await world.play(3_000, before)
    assert await world.drift_events() == []
    change = len(world.played.labels)

    # 2. The concept changes; play until the performance drift is published.
    while not [e for e in await world.drift_events() if e.kind == "performance"]:
        assert len(world.played.labels) - change < 500, "no performance alarm in 500 labels"
        await world.play(CHUNK, after)
    alarm_after = len(world.played.labels) - change
    [event] = await world.drift_events()
    assert (event.kind, event.statistic, event.version) == (
        "performance",
        "mann_whitney_log_loss",
        "1",
    )
    assert event.change_point is not None

    # 3. The stream goes on; the trainer retrains on the window since the change point.
    await world.play(change + 10_000 - len(world.played.labels), after)
    served = world.played.served_from
    new = sorted((row, v) for v, row in served.items() if v != "1")
    assert new, f"no new version served; events: {await world.drift_events()}"
    first_new_row = new[0][0] - change
    pre = world.played.accuracy(change - 2_000, change)
    post = world.played.accuracy(change + 2_000, change + 10_000)
    print(
        f"\nconcept drift: alarm published {alarm_after} labels after the change; "
        f"versions served from (labels after the change): "
        f"{ {v: row - change for row, v in new} }; accuracy before {pre:.3f}, "
        f"labels 2,000-10,000 after {post:.3f}"
    )
    assert first_new_row <= 2_000, f"first new version served {first_new_row} labels after"
    assert post >= pre - 0.03, f"accuracy after {post:.3f} vs before {pre:.3f}"
    registry = world.registry
    info = {v.version: v for v in registry.list_versions(world.model.name)}
    assert "window_since" in info[new[0][1]].tags and "drift" in info[new[0][1]].tags["reason"]

    # 4. A worse candidate is registered, not promoted: asked to train on a window that
    #    reaches back before the change, it learns the two concepts mixed, and on the
    #    newest holdout it loses to the champion (log loss, AUC).
    champion = registry.champion_version(world.model.name)
    known = set(info)
    ask = RetrainModel(
        model=world.model.name, reason="acceptance: mixed window", since=world.started_at
    )
    await world.publisher.publish(world.settings.topics.retrain, ask, key=world.model.name)
    deadline = time.monotonic() + 120
    name = world.model.name
    while not (fresh := [v for v in registry.list_versions(name) if v.version not in known]):
        assert time.monotonic() < deadline, "the mixed-window candidate was never registered"
        await asyncio.sleep(0.5)
    [worse] = fresh
    assert worse.tags["promotion"].startswith("not promoted"), worse.tags["promotion"]
    assert registry.champion_version(world.model.name) == champion

    # 5. A rollback restores the previous champion, and serve follows it.
    moved = registry.rollback(world.model.name)
    assert moved.version != champion and registry.champion_version(world.model.name) == (
        moved.version
    )
    assert world.champion()[0] == moved.version


async def test_covariate_drift_on_two_of_six_inputs_alarms_on_exactly_those(
    world: World,
) -> None:
    """Two inputs shift by 1.5 standard deviations (the concept holds): feature-drift
    events name exactly those two, none before the shift."""
    await world.play(3_000, before)
    assert await world.drift_events() == []
    shifted_at = datetime.now(UTC)
    for _ in range(40):
        await world.play(100, before, shift={1: 1.5, 4: 1.5})
        found = {e.feature for e in await world.drift_events() if e.kind == "feature"}
        if len(found) >= 2:
            break
    await world.play(1_000, before, shift={1: 1.5, 4: 1.5})  # no others come later
    events = await world.drift_events()
    features = sorted(e.feature for e in events if e.kind == "feature")
    assert features == ["w.x1", "w.x4"], events
    for e in events:
        assert e.change_point is not None and e.change_point >= shifted_at.replace(microsecond=0), e
