"""Retrain handlers against fakes: what they publish, dead-letter and write offline."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from libs.common.clients.kafka import DeadLetters, Delivery, MemoryPublisher
from libs.common.definitions import load_definitions
from libs.common.offline import OUTCOMES, PREDICTIONS, OfflineStore
from libs.common.schemas import (
    DeadLetter,
    DriftDetected,
    Message,
    ModelChanged,
    ModelRef,
    Outcome,
    PredictionMade,
    RetrainModel,
)
from libs.common.testing import delivery
from services.retrain.core.promotion import PromotionDecision
from services.retrain.core.results import TrainingResult
from services.retrain.errors import NoTrainingData
from services.retrain.handlers import RetrainHandlers
from services.retrain.settings import RetrainSettings

REPO = Path(__file__).resolve().parents[3]


def _record(topic: str, message: Message, offset: int, partition: int = 0) -> Delivery[Message]:
    return delivery(topic, message, offset, partition=partition, key="default")


class FakeTrainer:
    """Records calls; answers with a promoted version, or raises what it was given."""

    def __init__(self, error: Exception | None = None, promote: bool = True) -> None:
        self.calls: list[tuple[str, str]] = []
        self.request_ids: list[list[str]] = []
        self.windows: list[float | None] = []
        self.error = error
        self.promote = promote

    def __call__(
        self, model: str, reason: str, request_ids: Sequence[str], since: float | None
    ) -> TrainingResult:
        self.calls.append((model, reason))
        self.request_ids.append(list(request_ids))
        self.windows.append(since)
        if self.error is not None:
            raise self.error
        return TrainingResult(
            model=model,
            version=str(len(self.calls)),
            reason=reason,
            metrics={"auc": 0.8, "rows": 1000.0},
            decision=PromotionDecision(self.promote, ("ok",)),
            previous_champion=None,
        )


@pytest.fixture(name="settings")
def _settings(tmp_path: Path) -> RetrainSettings:
    return RetrainSettings(data_dir=tmp_path, definitions=REPO / "signalops.yaml")


def _handlers(
    settings: RetrainSettings,
    trainer: FakeTrainer,
    publisher: MemoryPublisher,
    answered: dict[str, str] | None = None,
) -> RetrainHandlers:
    answered = answered if answered is not None else {}
    return RetrainHandlers(
        settings,
        load_definitions(settings.definitions),
        publisher,
        DeadLetters(publisher, settings.topics.dlq, "retrain"),
        trainer,
        OfflineStore(settings.offline_dir),
        answered_by=lambda _model, request_id: answered.get(request_id),
    )


async def test_retrain_request_publishes_registered_and_promoted(
    settings: RetrainSettings,
) -> None:
    """A request for a known model trains it and announces the new champion."""
    trainer, publisher = FakeTrainer(), MemoryPublisher()
    request = RetrainModel(model="default", reason="weekly")
    await _handlers(settings, trainer, publisher).on_trainer_batch(
        [_record(settings.topics.retrain, request, 0)]
    )
    assert trainer.calls == [("default", "weekly")]
    sent = publisher.messages[settings.topics.models]
    assert [(m.kind, m.alias) for m in sent if isinstance(m, ModelChanged)] == [
        ("registered", None),
        ("promoted", "champion"),
    ]
    assert [k for k, _ in publisher.sent[settings.topics.models]] == ["default", "default"]


async def test_not_promoted_announces_only_the_registration(settings: RetrainSettings) -> None:
    """A version that fails the gates is announced as registered, never as promoted."""
    publisher = MemoryPublisher()
    await _handlers(settings, FakeTrainer(promote=False), publisher).on_trainer_batch(
        [_record(settings.topics.retrain, RetrainModel(model="default"), 0)]
    )
    assert [m.kind for m in publisher.messages[settings.topics.models]] == ["registered"]


async def test_unknown_model_is_a_dead_letter(settings: RetrainSettings) -> None:
    """A request naming no declared model goes to the DLQ with its reason, untrained."""
    trainer, publisher = FakeTrainer(), MemoryPublisher()
    request = RetrainModel(model="nope")
    raw = request.to_bytes()
    await _handlers(settings, trainer, publisher).on_trainer_batch(
        [_record(settings.topics.retrain, request, 3)]
    )
    assert trainer.calls == []
    [dead] = publisher.messages[settings.topics.dlq]
    assert isinstance(dead, DeadLetter)
    assert (dead.reason, dead.stage, dead.original) == ("unknown_model", "retrain", raw)
    assert "'nope'" in dead.detail and "default" in dead.detail
    assert settings.topics.models not in publisher.messages


async def test_failed_training_is_a_dead_letter_with_its_reason(
    settings: RetrainSettings,
) -> None:
    """A run that raises publishes no model event; its request is dead-lettered with the
    error, so the offset commits and a poison request cannot loop.
    """
    trainer, publisher = FakeTrainer(error=RuntimeError("boom")), MemoryPublisher()
    request = RetrainModel(model="default")
    await _handlers(settings, trainer, publisher).on_trainer_batch(
        [_record(settings.topics.retrain, request, 0)]
    )
    assert [model for model, _ in trainer.calls] == ["default"]
    assert settings.topics.models not in publisher.messages
    [dead] = publisher.messages[settings.topics.dlq]
    assert isinstance(dead, DeadLetter)
    assert dead.reason == "training_failed" and "boom" in dead.detail
    assert dead.original == request.to_bytes()


async def test_no_training_data_is_skipped_quietly(settings: RetrainSettings) -> None:
    """No labels yet is not an error: nothing is published, nothing dead-lettered."""
    trainer, publisher = FakeTrainer(error=NoTrainingData("no outcomes yet")), MemoryPublisher()
    await _handlers(settings, trainer, publisher).on_trainer_batch(
        [_record(settings.topics.retrain, RetrainModel(model="default"), 0)]
    )
    assert [model for model, _ in trainer.calls] == ["default"]
    assert not publisher.messages


async def test_redelivered_request_trains_once(settings: RetrainSettings) -> None:
    """The request id is passed to the trainer (tagged on the version); a redelivered
    request whose id a version already carries is not trained again.
    """
    trainer, publisher = FakeTrainer(), MemoryPublisher()
    request = RetrainModel(model="default", reason="weekly")
    answered: dict[str, str] = {}
    handlers = _handlers(settings, trainer, publisher, answered)
    await handlers.on_trainer_batch([_record(settings.topics.retrain, request, 0)])
    assert trainer.request_ids == [[request.event_id]]
    answered[request.event_id] = "1"  # what the registry now knows
    await handlers.on_trainer_batch([_record(settings.topics.retrain, request, 0)])
    assert len(trainer.calls) == 1
    # One run's two events, then the answered version announced again (the first
    # delivery may have stopped before publishing).
    sent = publisher.messages[settings.topics.models]
    assert [(m.kind, m.version) for m in sent if isinstance(m, ModelChanged)] == [
        ("registered", "1"),
        ("promoted", "1"),
        ("registered", "1"),
    ]


async def test_drift_event_retrains_with_its_reason(settings: RetrainSettings) -> None:
    """A DriftDetected is handled like a retrain request; the reason names the drift."""
    trainer, publisher = FakeTrainer(), MemoryPublisher()
    event = DriftDetected(
        model="default",
        version="3",
        feature="device_stats.temperature_last",
        statistic="psi",
        value=0.41,
        threshold=0.2,
    )
    await _handlers(settings, trainer, publisher).on_trainer_batch(
        [_record(settings.topics.drift, event, 0)]
    )
    [(model, reason)] = trainer.calls
    assert model == "default"
    assert reason == "drift: psi of device_stats.temperature_last = 0.41 > 0.2 (version 3)"
    assert [m.kind for m in publisher.messages[settings.topics.models]] == [
        "registered",
        "promoted",
    ]


async def test_one_run_per_model_per_batch(settings: RetrainSettings) -> None:
    """Requests and drift events for one model in one poll trigger a single run."""
    trainer = FakeTrainer()
    drift = DriftDetected(model="default", feature="f", statistic="psi", value=0.3, threshold=0.2)
    records = [
        _record(settings.topics.retrain, RetrainModel(model="default", reason="a"), 0),
        _record(settings.topics.retrain, RetrainModel(model="default", reason="a"), 1),
        _record(settings.topics.drift, drift, 0),
    ]
    await _handlers(settings, trainer, MemoryPublisher()).on_trainer_batch(records)
    [(model, reason)] = trainer.calls
    assert model == "default"
    assert reason == "a; drift: psi of f = 0.3 > 0.2"


async def test_outcomes_and_predictions_land_in_the_offline_store(
    settings: RetrainSettings,
) -> None:
    """Logged records become one file per topic-partition, named by its first offset."""
    publisher = MemoryPublisher()
    handlers = _handlers(settings, FakeTrainer(), publisher)
    outcome = Outcome(model="default", entity_id="device-1", label=1, prediction_id="p1")
    prediction = PredictionMade(
        event_id="p1",
        entity_id="device-1",
        score=0.7,
        model=ModelRef(name="default", version="2", variant="champion"),
    )
    t = settings.topics
    records = [
        _record(t.outcomes, outcome, 40, partition=1),
        _record(t.predictions, prediction, 7),
    ]
    await handlers.on_log_batch(records)
    await handlers.on_log_batch(records)  # a replay rewrites the same files
    store = OfflineStore(settings.offline_dir)
    assert [Path(f).name for f in store.files(OUTCOMES)] == [f"{t.outcomes}-1-000000000040.parquet"]
    assert [Path(f).name for f in store.files(PREDICTIONS)] == [
        f"{t.predictions}-0-000000000007.parquet"
    ]
    [row] = store.read(OUTCOMES).to_pylist()
    assert (row["event_id"], row["label"], row["prediction_id"]) == (outcome.event_id, 1.0, "p1")
    assert row["ts"] == outcome.event_time.timestamp()
    [pred] = store.read(PREDICTIONS).to_pylist()
    assert (pred["event_id"], pred["model"], pred["version"]) == ("p1", "default", "2")
    assert t.dlq not in publisher.messages


async def test_drift_change_point_becomes_the_data_window(settings: RetrainSettings) -> None:
    """A performance drift trains on rows since its change point; coalesced with a
    request for all history, the run takes the newest window asked for."""
    trainer = FakeTrainer()
    change = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    drift = DriftDetected(
        model="default",
        kind="performance",
        feature="log_loss",
        statistic="mann_whitney_log_loss",
        value=0.9,
        threshold=0.1,
        change_point=change,
    )
    await _handlers(settings, trainer, MemoryPublisher()).on_trainer_batch(
        [
            _record(settings.topics.retrain, RetrainModel(model="default"), 0),
            _record(settings.topics.drift, drift, 0),
        ]
    )
    assert trainer.windows == [change.timestamp()]


class LaggingLog(FakeTrainer):
    """Finds too few rows the first `lag` times (the offline log has not caught up)."""

    def __init__(self, lag: int) -> None:
        super().__init__()
        self.lag = lag

    def __call__(
        self, model: str, reason: str, request_ids: Sequence[str], since: float | None
    ) -> TrainingResult:
        if self.lag:
            self.lag -= 1
            self.calls.append((model, reason))
            raise NoTrainingData("150 labelled rows in the window; waiting for labels")
        return super().__call__(model, reason, request_ids, since)


@pytest.mark.parametrize(
    ("ask", "runs", "promoted"),
    [
        (
            DriftDetected(
                model="default",
                kind="performance",
                feature="log_loss",
                statistic="mw",
                value=1.0,
                threshold=0.2,
            ),
            3,
            True,
        ),
        (
            RetrainModel(model="default", reason="after drift", requested_by="drift-monitor"),
            3,
            True,
        ),
        (
            DriftDetected(
                model="default",
                kind="feature",
                feature="f",
                statistic="psi",
                value=0.3,
                threshold=0.2,
            ),
            1,
            False,
        ),
        (RetrainModel(model="default", reason="by hand"), 1, False),
    ],
    ids=["performance_drift", "monitor_request", "feature_drift", "engineer_request"],
)
async def test_asks_sent_after_counted_labels_wait_for_the_offline_log(
    settings: RetrainSettings,
    monkeypatch: pytest.MonkeyPatch,
    ask: Message,
    runs: int,
    promoted: bool,
) -> None:
    """The monitor judged the labels of a performance drift (or of its own request), so a
    run that finds too few waits for the offline log; other asks are skipped at once."""
    monkeypatch.setattr("services.retrain.handlers.LOG_CATCH_UP_POLL_S", 0.01)
    trainer, publisher = LaggingLog(lag=2), MemoryPublisher()
    topic = settings.topics.drift if isinstance(ask, DriftDetected) else settings.topics.retrain
    await _handlers(settings, trainer, publisher).on_trainer_batch([_record(topic, ask, 0)])
    assert len(trainer.calls) == runs
    kinds = [m.kind for m in publisher.messages[settings.topics.models]]
    assert kinds == (["registered", "promoted"] if promoted else [])
