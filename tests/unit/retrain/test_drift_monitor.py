"""The model monitor, pure: predictions and late labels in, one drift event out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from libs.common.schemas import DriftDetected, ModelRef, Outcome, PredictionMade, RetrainModel
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
    # One drift event, then (1,200 labels after the change point) a retrain request on
    # the larger window since the same change point.
    event, refit = events
    assert isinstance(event, DriftDetected) and isinstance(refit, RetrainModel)
    assert (refit.since, refit.requested_by) == (event.change_point, "drift-monitor")
    assert f"{MonitorPolicy().refit_labels} labels since" in refit.reason
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
    # The drift at once; retrains on the window since its change point once 300 and
    # then 1,200 labels arrived after it (the drift itself has too few to learn from).
    drift, *asks = events
    assert isinstance(drift, DriftDetected) and (drift.kind, drift.feature) == ("feature", "v.b")
    assert [type(a) for a in asks] == [RetrainModel, RetrainModel]
    assert all(isinstance(a, RetrainModel) and a.since == drift.change_point for a in asks)
    assert ["300 labels since" in a.reason for a in asks] == [True, False]  # type: ignore[union-attr]
    assert len({a.event_id for a in asks}) == 2


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


def test_a_correction_is_counted_and_not_judged_twice() -> None:
    """A second label for the same prediction (before or after the prediction is read)
    is counted as a correction; the rolling metrics hold one label per answer."""
    monitor = _monitor(np.random.default_rng(3))
    p = PredictionMade(
        entity_id="e1",
        event_time=T0,
        model=ModelRef(name="m", version="1", variant="champion"),
        score=0.9,
        features={c: 0.0 for c in COLUMNS},
    )
    early = Outcome(model="m", entity_id="e1", label=0.0, prediction_id=p.event_id, event_time=T0)
    fixed = Outcome(
        model="m",
        entity_id="e1",
        label=1.0,
        prediction_id=p.event_id,
        event_time=T0 + timedelta(seconds=5),
    )
    # Both labels arrive before their prediction: the latest one waits in its place.
    assert monitor.on_outcome(early) == [] and monitor.on_outcome(fixed) == []
    assert (monitor.counts.waiting, monitor.counts.corrected) == (1, 1)
    monitor.on_prediction(p)
    assert (monitor.counts.waiting, monitor.counts.joined) == (0, 1)
    # A third label after the answer was judged: counted, not judged again.
    again = Outcome(model="m", entity_id="e1", label=0.0, prediction_id=p.event_id, event_time=T0)
    monitor.on_outcome(again.model_copy(update={"event_id": "another"}))
    assert monitor.counts.corrected == 2
    [window] = monitor.rolling().values()
    metrics = window.metrics()
    assert metrics is not None and metrics.labels == 1 and metrics.accuracy == 1.0
