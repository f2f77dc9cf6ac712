"""Drift statistics, pure: no false alarms on stationary data, the right alarms on drift."""

from __future__ import annotations

import numpy as np
import pytest

from services.retrain.core.drift.features import FeatureDriftMonitor, FeatureDriftPolicy
from services.retrain.core.drift.performance import (
    LossChangeDetector,
    PerformancePolicy,
    RollingWindow,
    log_loss,
)
from services.retrain.core.drift.reference import DriftReference

COLUMNS = [f"v.f{i}" for i in range(6)]


def _reference(rng: np.random.Generator) -> DriftReference:
    data = rng.normal(size=(20_000, len(COLUMNS)))
    data[:, 5] = rng.exponential(size=20_000)  # one skewed column
    return DriftReference.of({c: data[:, i] for i, c in enumerate(COLUMNS)})


def _rows(rng: np.random.Generator, n: int, shift: dict[int, float] | None = None) -> np.ndarray:
    data = rng.normal(size=(n, len(COLUMNS)))
    data[:, 5] = rng.exponential(size=n)
    for i, by in (shift or {}).items():
        data[:, i] += by
    return data


def test_stationary_stream_of_50000_rows_raises_no_feature_alarm() -> None:
    rng = np.random.default_rng(1)
    monitor = FeatureDriftMonitor(_reference(rng), FeatureDriftPolicy())
    alarms = []
    for t, row in enumerate(_rows(rng, 50_000)):
        alarms += monitor.add(dict(zip(COLUMNS, row.tolist(), strict=True)), float(t))
    assert alarms == []
    assert max(c.psi for c in monitor.last.values()) < 0.05


def test_covariate_drift_on_two_of_six_features_alarms_on_exactly_those() -> None:
    rng = np.random.default_rng(2)
    monitor = FeatureDriftMonitor(_reference(rng), FeatureDriftPolicy())
    before = [
        monitor.add(dict(zip(COLUMNS, r.tolist(), strict=True)), float(t))
        for t, r in enumerate(_rows(rng, 10_000))
    ]
    assert not any(before)
    alarms = []
    for t, row in enumerate(_rows(rng, 10_000, shift={1: 1.0, 4: -1.0}), start=10_000):
        alarms += monitor.add(dict(zip(COLUMNS, row.tolist(), strict=True)), float(t))
    assert sorted(a.column for a in alarms) == ["v.f1", "v.f4"]
    assert all(a.since >= 10_000 and a.psi > 0.2 and a.p_value < 0.01 / 6 for a in alarms)
    # One drift is one event: more drifted rows alarm no more.
    more = [
        monitor.add(dict(zip(COLUMNS, r.tolist(), strict=True)), 0.0)
        for r in _rows(rng, 3000, {1: 1.0, 4: -1.0})
    ]
    assert not any(more)


def test_missing_values_are_not_drift() -> None:
    rng = np.random.default_rng(3)
    monitor = FeatureDriftMonitor(_reference(rng), FeatureDriftPolicy())
    alarms = []
    for t, row in enumerate(_rows(rng, 6000)):
        values: dict[str, float | None] = dict(zip(COLUMNS, row.tolist(), strict=True))
        values["v.f2"] = None if t % 2 else values["v.f2"]
        alarms += monitor.add(values, float(t))
    assert alarms == []


def _losses(rng: np.random.Generator, n: int, accuracy: float) -> list[float]:
    """Losses of a confident binary model that is right with probability `accuracy`."""
    out = []
    for _ in range(n):
        label = float(rng.random() < 0.5)
        right = rng.random() < accuracy
        p_true = rng.uniform(0.75, 0.98)
        score = p_true if (label == 1.0) == right else 1 - p_true
        out.append(log_loss(label, score))
    return out


def test_stationary_labels_raise_no_performance_alarm() -> None:
    rng = np.random.default_rng(4)
    detector = LossChangeDetector(PerformancePolicy())
    assert all(detector.add(x, float(t)) is None for t, x in enumerate(_losses(rng, 50_000, 0.9)))


@pytest.mark.parametrize("after", [0.5, 0.7])
def test_concept_drift_alarms_within_500_labels_with_its_change_point(after: float) -> None:
    rng = np.random.default_rng(5)
    detector = LossChangeDetector(PerformancePolicy())
    for t, x in enumerate(_losses(rng, 5000, 0.95)):
        assert detector.add(x, float(t)) is None
    alarm = None
    for t, x in enumerate(_losses(rng, 500, after), start=5000):
        alarm = alarm or detector.add(x, float(t))
    assert alarm is not None, "no alarm within 500 labels of the change"
    assert alarm.labels - 5000 <= 500
    assert abs(alarm.change_at - 5000) <= 60
    assert alarm.recent_loss > alarm.reference_loss


def test_rolling_metrics() -> None:
    window = RollingWindow(size=4)
    for label, score in [(1, 0.9), (0, 0.2), (1, 0.4), (0, 0.6), (1, 0.8)]:
        window.add(label, score)
    m = window.metrics()
    assert m is not None and m.labels == 5
    # The newest four: (0,.2) (1,.4) (0,.6) (1,.8): two right by threshold 0.5.
    assert m.accuracy == 0.5
    assert m.auc == pytest.approx(0.75)
    assert m.calibration == pytest.approx(0.5 - 0.5)


def test_reference_round_trips_as_json() -> None:
    ref = _reference(np.random.default_rng(6))
    again = DriftReference.from_json(ref.to_json())
    assert again == ref


def test_a_version_that_starts_serving_after_the_change_alarms_against_its_holdout() -> None:
    """Its own first labels are already bad, so there is no clean window to compare; the
    loss it was expected to have (its holdout log loss) is the baseline."""
    rng = np.random.default_rng(7)
    good = _losses(rng, 5000, 0.95)
    detector = LossChangeDetector(PerformancePolicy(), expected_loss=float(np.mean(good)))
    alarm = None
    for t, x in enumerate(_losses(rng, 400, 0.5)):
        alarm = alarm or detector.add(x, float(t))
    assert alarm is not None and alarm.labels <= 200
    # And one that performs as expected does not alarm.
    calm = LossChangeDetector(PerformancePolicy(), expected_loss=float(np.mean(good)))
    assert all(calm.add(x, float(t)) is None for t, x in enumerate(_losses(rng, 20_000, 0.95)))
