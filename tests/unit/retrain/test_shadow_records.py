"""Shadow scores (serve's challenger scoring rows it never answered) stay out of the
drift monitor and out of the offline prediction log that training joins labels to."""

from __future__ import annotations

from pathlib import Path

from libs.common.clients.kafka import DeadLetters, MemoryPublisher
from libs.common.definitions import load_definitions
from libs.common.offline import PREDICTIONS, OfflineStore
from libs.common.schemas import ModelRef, PredictionMade
from libs.common.testing import delivery
from services.retrain.handlers import RetrainHandlers
from services.retrain.monitoring import DriftMonitorHandlers
from services.retrain.settings import RetrainSettings

REPO = Path(__file__).resolve().parents[3]


def _predictions() -> tuple[PredictionMade, PredictionMade]:
    answered = PredictionMade(
        event_id="p-answered",
        entity_id="device-1",
        score=0.7,
        model=ModelRef(name="default", version="1", variant="fallback"),
    )
    shadow = PredictionMade(
        event_id="p-shadow",
        entity_id="device-1",
        score=0.4,
        model=ModelRef(name="default", version="2", variant="challenger"),
        shadow=True,
    )
    return answered, shadow


async def test_offline_log_keeps_answered_predictions_only(tmp_path: Path) -> None:
    """Of an answered prediction and a shadow score in one batch, only the first is stored."""
    settings = RetrainSettings(data_dir=tmp_path, definitions=REPO / "signalops.yaml")
    publisher = MemoryPublisher()
    handlers = RetrainHandlers(
        settings,
        load_definitions(settings.definitions),
        publisher,
        DeadLetters(publisher, settings.topics.dlq, "retrain"),
        lambda *_: None,  # type: ignore[arg-type,return-value]  # never trains here
        OfflineStore(settings.offline_dir),
        answered_by=lambda _model, _request: None,
    )
    answered, shadow = _predictions()
    t = settings.topics.predictions
    await handlers.on_log_batch(
        [delivery(t, answered, 0, key="device-1"), delivery(t, shadow, 1, key="device-1")]
    )
    rows = OfflineStore(settings.offline_dir).read(PREDICTIONS).to_pylist()
    assert [r["event_id"] for r in rows] == ["p-answered"]


async def test_monitor_ignores_shadow_scores(tmp_path: Path) -> None:
    """The monitor sees the answered prediction and never the shadow score."""
    settings = RetrainSettings(data_dir=tmp_path, definitions=REPO / "signalops.yaml")
    monitor = DriftMonitorHandlers(
        load_definitions(settings.definitions),
        MemoryPublisher(),
        settings.topics,
        read_file=lambda *_: None,
    )
    answered, shadow = _predictions()
    t = settings.topics.predictions
    await monitor.on_batch(
        [delivery(t, shadow, 0, key="device-1"), delivery(t, answered, 1, key="device-1")]
    )
    default = monitor.monitors["default"]
    assert default.seen("p-answered") is True  # fed before: already seen
    assert default.seen("p-shadow") is False  # never fed
