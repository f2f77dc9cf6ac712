"""The model monitor, pure: predictions and late labels in, one drift event out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from libs.common.schemas import ModelRef, Outcome, PredictionMade
from services.retrain.core.drift.monitor import ModelMonitor, MonitorPolicy
from services.retrain.core.drift.reference import PREDICTION, DriftReference

T0 = datetime(2026, 12, 1, tzinfo=UTC)
COLUMNS = ["v.a", "v.b", "v.c"]


def _stream(
    monitor: ModelMonitor,
    rng: np.random.Generator,
    start: int,
    n: int,
    *,
    flip: bool,
    shift: float = 0.0,
) -> list:
    """Predictions then their labels, one entity per row, as the measured stream had:
    label = (a > 0), or its opposite after a concept drift; features never change."""
    events = []
    for i in range(start, start + n):
        x = rng.normal(size=3)
        x[1] += shift
        at = T0 + timedelta(seconds=i)
        score = float(1 / (1 + np.exp(-4 * x[0])))
        p = PredictionMade(
            entity_id=f"e{i}",
            event_time=at,
            model=ModelRef(name="m", version="1", variant="champion"),
            score=score,
            features=dict(zip(COLUMNS, x.tolist(), strict=True)),
        )
        events += monitor.on_prediction(p)
        label = float((x[0] > 0) != flip)
        o = Outcome(
            model="m", entity_id=f"e{i}", label=label, prediction_id=p.event_id, event_time=at
        )
        events += monitor.on_outcome(o)
    return events


def _monitor(rng: np.random.Generator) -> ModelMonitor:
    monitor = ModelMonitor("m", MonitorPolicy())
    x = rng.normal(size=(10_000, 3))
    scores = 1 / (1 + np.exp(-4 * x[:, 0]))
    ref = DriftReference.of({**{c: x[:, i] for i, c in enumerate(COLUMNS)}, PREDICTION: scores})
    monitor.set_reference("1", ref)
    return monitor


def test_stationary_stream_raises_nothing() -> None:
    rng = np.random.default_rng(0)
    monitor = _monitor(rng)
    assert _stream(monitor, rng, 0, 20_000, flip=False) == []
    assert monitor.counts.joined == 20_000 and monitor.counts.unjoined == 0
    [(key, window)] = monitor.rolling().items()
    assert key == ("1", "champion") and window.metrics().accuracy > 0.99  # type: ignore[union-attr]


def test_concept_drift_is_one_performance_event_after_the_post_change_labels() -> None:
    rng = np.random.default_rng(1)
    monitor = _monitor(rng)
    assert _stream(monitor, rng, 0, 5000, flip=False) == []
    events = _stream(monitor, rng, 5000, 3000, flip=True)
    # The drift, then (1,200 labels after the change point) the refit on more data.
    event, refit = events
    assert (refit.statistic, refit.change_point) == ("refit_after_drift", event.change_point)
    assert refit.value >= MonitorPolicy().refit_labels
    assert (event.kind, event.feature, event.version) == ("performance", "log_loss", "1")
    assert event.change_point is not None
    assert abs((event.change_point - (T0 + timedelta(seconds=5000))).total_seconds()) <= 60
    alarm = monitor.versions["1"].loss.alarm
    assert alarm is not None and alarm.labels - 5000 <= 500  # alarmed within 500 labels
    assert event.value > event.threshold


def test_covariate_drift_names_the_feature() -> None:
    rng = np.random.default_rng(2)
    monitor = _monitor(rng)
    assert _stream(monitor, rng, 0, 3000, flip=False) == []
    events = _stream(monitor, rng, 3000, 3000, flip=False, shift=1.5)
    assert [(e.kind, e.feature) for e in events] == [("feature", "v.b")]


def test_fallback_answers_and_unknown_labels_are_not_judged() -> None:
    monitor = ModelMonitor("m", MonitorPolicy())
    p = PredictionMade(
        entity_id="e", model=ModelRef(name="m", version="0", variant="fallback"), score=0.5
    )
    assert monitor.on_prediction(p) == []
    assert (
        monitor.on_outcome(Outcome(model="m", entity_id="e", label=1, prediction_id=p.event_id))
        == []
    )
    assert monitor.on_outcome(Outcome(model="m", entity_id="x", label=0.7)) == []
    assert monitor.on_outcome(Outcome(model="m", entity_id="nobody", label=1)) == []
    assert (monitor.counts.unjoined, monitor.counts.invalid_label) == (1, 1)
    assert monitor.versions == {}  # the fallback's label judged no version


def test_a_label_read_before_its_prediction_waits_for_it() -> None:
    rng = np.random.default_rng(3)
    monitor = _monitor(rng)
    p = PredictionMade(
        entity_id="e", model=ModelRef(name="m", version="1", variant="champion"), score=0.9
    )
    assert (
        monitor.on_outcome(Outcome(model="m", entity_id="e", label=1, prediction_id=p.event_id))
        == []
    )
    assert monitor.counts.waiting == 1
    monitor.on_prediction(p)
    assert (monitor.counts.waiting, monitor.counts.joined) == (0, 1)
