"""The drift monitor of one model: predictions and late labels in, drift events out.

Times are those of the predictions a label judges (when the model answered), so a
change point is on the clock the trainer's data window filters on (rows as of their
prediction time), however late the labels arrive.

Per serving version it keeps a feature-drift monitor (inputs logged with each
prediction against the version's training reference), a prediction-drift monitor
(its scores), a loss-change detector (champion answers joined to their labels) and
rolling metrics per variant. Each drift is reported once per version; a performance
drift is reported only after `post_change_labels` labels since its change point, so
the retraining it triggers has data from after the change to learn from.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from libs.common.schemas import DriftDetected, Outcome, PredictionMade, RetrainModel, stable_id
from services.retrain.core.drift.features import (
    FeatureAlarm,
    FeatureDriftMonitor,
    FeatureDriftPolicy,
)
from services.retrain.core.drift.performance import (
    LossChangeDetector,
    PerformanceAlarm,
    PerformancePolicy,
    RollingWindow,
    log_loss,
)
from services.retrain.core.drift.reference import PREDICTION, DriftReference


@dataclass(frozen=True)
class MonitorPolicy:
    features: FeatureDriftPolicy = field(default_factory=FeatureDriftPolicy)
    performance: PerformancePolicy = field(default_factory=PerformancePolicy)
    max_predictions: int = 200_000  # predictions kept for joining late labels
    max_versions: int = 5  # versions whose drift state is kept (the newest seen)
    # After a concept drift, retrain once more when this many labels since the change
    # point have arrived: the first retrain had only `post_change_labels` to learn from.
    refit_labels: int = 1200


@dataclass(frozen=True)
class _Served:
    version: str
    variant: str
    score: float
    entity_id: str
    at: float  # when it was served: the clock of change points and training windows


@dataclass
class VersionState:
    version: str
    inputs: FeatureDriftMonitor | None
    scores: FeatureDriftMonitor | None
    loss: LossChangeDetector
    rolling: dict[str, RollingWindow] = field(default_factory=dict)
    pending: PerformanceAlarm | None = None
    post_change: int = 0
    reported: bool = False


Finding = DriftDetected | RetrainModel
"""What the monitor reports: a drift (drift.events), or a retrain it asks for once
enough labels since a drift's change point arrived (retrain.requests)."""

REQUESTED_BY = "drift-monitor"


@dataclass
class _Refit:
    """The retrains that follow a drift: labels since its change point are counted, and
    a retrain on them is asked for at each of `at_labels`."""

    change_at: float
    drift: str  # what drifted, for the request's reason
    at_labels: tuple[int, ...]
    labels: int = 0


@dataclass
class JoinCounts:
    joined: int = 0
    by_entity: int = 0
    waiting: int = 0  # labels read before their prediction, parked until it arrives
    unjoined: int = 0  # labels whose prediction never came (evicted) or was not named
    invalid_label: int = 0
    corrected: int = 0  # a second label for a prediction already judged (not judged again)


class ModelMonitor:
    """Drift state of one model across its serving versions."""

    def __init__(self, model: str, policy: MonitorPolicy) -> None:
        self.model = model
        self.policy = policy
        self.versions: dict[str, VersionState] = {}
        self.references: dict[str, DriftReference | None] = {}
        self.expected_loss: dict[str, float] = {}
        self.counts = JoinCounts()
        self._served: OrderedDict[str, _Served] = OrderedDict()
        self._latest_of_entity: dict[str, str] = {}
        # Two topics are read in no fixed order: a label can come before its prediction.
        self._waiting: OrderedDict[str, Outcome] = OrderedDict()
        self._refit: _Refit | None = None
        # Ids already fed: a batch the runtime delivers again (a failed publish) must not
        # count its records twice.
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._judged: OrderedDict[str, None] = OrderedDict()  # prediction ids with a label

    def seen(self, event_id: str) -> bool:
        """True when this record was fed before; remembers it otherwise (bounded)."""
        if event_id in self._seen:
            return True
        self._seen[event_id] = None
        if len(self._seen) > 2 * self.policy.max_predictions:
            self._seen.popitem(last=False)
        return False

    def needs_reference(self, version: str) -> bool:
        return version not in self.references

    def set_reference(
        self, version: str, reference: DriftReference | None, expected_loss: float | None = None
    ) -> None:
        """The version's training reference (None: none stored; feature drift is off) and
        its holdout log loss (the loss its answers are expected to have)."""
        self.references[version] = reference
        if expected_loss is not None and expected_loss == expected_loss:
            self.expected_loss[version] = expected_loss

    def _state(self, version: str) -> VersionState:
        state = self.versions.get(version)
        if state is None:
            ref = self.references.get(version)
            inputs = scores = None
            if ref is not None:
                columns = {c: r for c, r in ref.columns.items() if c != PREDICTION}
                inputs = FeatureDriftMonitor(DriftReference(columns), self.policy.features)
                if PREDICTION in ref.columns:
                    scores = FeatureDriftMonitor(
                        DriftReference({PREDICTION: ref.columns[PREDICTION]}),
                        self.policy.features,
                    )
            state = VersionState(
                version, inputs, scores, LossChangeDetector(self.policy.performance)
            )
            self.versions[version] = state
        return state

    # predictions -------------------------------------------------------------------
    def on_prediction(self, p: PredictionMade) -> list[Finding]:
        self._remember(p)
        early = self._waiting.pop(p.event_id, None)
        if early is not None:
            self.counts.waiting -= 1
        if p.model.variant != "champion":
            return self.on_outcome(early) if early is not None else []
        state = self._state(p.model.version)
        at = p.event_time.timestamp()
        events: list[Finding] = []
        if state.inputs is not None:
            events += [
                self._feature_event(a, state, "feature") for a in state.inputs.add(p.features, at)
            ]
        if state.scores is not None:
            events += [
                self._feature_event(a, state, "prediction")
                for a in state.scores.add({PREDICTION: p.score}, at)
            ]
        for e in events:
            if isinstance(e, DriftDetected) and e.change_point is not None:
                # A shifted input says nothing yet of the model's answers: the trainer
                # gets the drift now (and waits for labels), the monitor asks for a
                # retrain on the window once `post_change_labels` labels since the
                # change point arrived, and again at `refit_labels`.
                self._arm(
                    e.change_point.timestamp(),
                    f"{e.kind} drift of {e.feature}",
                    (self.policy.performance.post_change_labels, self.policy.refit_labels),
                )
        if early is not None:
            events += self.on_outcome(early)
        return events

    def _remember(self, p: PredictionMade) -> None:
        self._served[p.event_id] = _Served(
            p.model.version, p.model.variant, p.score, p.entity_id, p.event_time.timestamp()
        )
        self._latest_of_entity[p.entity_id] = p.event_id
        while len(self._served) > self.policy.max_predictions:
            evicted, old = self._served.popitem(last=False)
            if self._latest_of_entity.get(old.entity_id) == evicted:
                del self._latest_of_entity[old.entity_id]

    # labels ------------------------------------------------------------------------
    def on_outcome(self, o: Outcome) -> list[Finding]:
        """Join a label to the prediction it names (else the entity's latest one)."""
        if o.label not in (0.0, 1.0):
            self.counts.invalid_label += 1
            return []
        pid = o.prediction_id
        served = self._served.get(pid) if pid else None
        if served is not None and pid is not None:
            if pid in self._judged:
                # A correction: the training join takes the latest label; the detector
                # already judged this answer once and must not count it twice.
                self.counts.corrected += 1
                return []
            self._judged[pid] = None
            if len(self._judged) > self.policy.max_predictions:
                self._judged.popitem(last=False)
            self.counts.joined += 1
        elif o.prediction_id is None and o.entity_id in self._latest_of_entity:
            served = self._served.get(self._latest_of_entity[o.entity_id])
            if served is not None:
                self.counts.by_entity += 1
        if served is None and o.prediction_id:
            if o.prediction_id in self._waiting:
                self.counts.corrected += 1  # the latest label waits in its place
                self._waiting[o.prediction_id] = o
                return []
            self._waiting[o.prediction_id] = o
            self.counts.waiting += 1
            if len(self._waiting) > self.policy.max_predictions:
                self._waiting.popitem(last=False)
                self.counts.waiting -= 1
                self.counts.unjoined += 1
            return []
        if served is None:
            self.counts.unjoined += 1
            return []
        if served.variant == "fallback":
            return []  # no model answered it: nothing to judge
        refit = self._count_for_refit(served)
        state = self._state(served.version)
        state.rolling.setdefault(served.variant, RollingWindow()).add(o.label, served.score)
        if served.variant != "champion":
            return refit
        at = served.at
        alarm = state.loss.add(log_loss(o.label, served.score), at)
        if alarm is not None:
            state.pending = alarm
            state.post_change = state.loss.labels_since(alarm.change_at)
        elif state.pending is not None and at >= state.pending.change_at:
            state.post_change += 1
        if (
            state.pending is not None
            and not state.reported
            and state.post_change >= self.policy.performance.post_change_labels
        ):
            state.reported = True
            # The event itself trains on the first `post_change_labels`; a refit on the
            # larger window follows at `refit_labels`.
            self._arm(state.pending.change_at, "performance drift", (self.policy.refit_labels,))
            if self._refit is not None and self._refit.change_at == state.pending.change_at:
                self._refit.labels = max(self._refit.labels, state.post_change)
            return [*refit, self._performance_event(state.pending, state)]
        return refit

    def _arm(self, change_at: float, drift: str, at_labels: tuple[int, ...]) -> None:
        """Follow the drift that began at `change_at` (the newest drift wins)."""
        if self._refit is None or change_at > self._refit.change_at:
            self._refit = _Refit(change_at, drift, at_labels)

    def _count_for_refit(self, served: _Served) -> list[Finding]:
        refit = self._refit
        if refit is None or served.at < refit.change_at:
            return []
        refit.labels += 1
        if refit.labels not in refit.at_labels:
            return []
        since = datetime.fromtimestamp(refit.change_at, UTC)
        return [
            RetrainModel(
                event_id=stable_id(
                    "retrain-after-drift", self.model, refit.change_at, refit.labels
                ),
                model=self.model,
                reason=f"retrain after {refit.drift} (change point {since.isoformat()}): "
                f"{refit.labels} labels since",
                requested_by=REQUESTED_BY,
                since=since,
            )
        ]

    # events ------------------------------------------------------------------------
    def _feature_event(
        self, a: FeatureAlarm, state: VersionState, kind: Literal["feature", "prediction"]
    ) -> DriftDetected:
        return DriftDetected(
            model=self.model,
            version=state.version,
            kind=kind,
            feature=a.column,
            statistic="psi",
            value=a.psi,
            threshold=a.threshold,
            p_value=a.p_value,
            window=a.window,
            change_point=datetime.fromtimestamp(a.since, UTC),
        )

    def _performance_event(self, a: PerformanceAlarm, state: VersionState) -> DriftDetected:
        p = self.policy.performance
        return DriftDetected(
            model=self.model,
            version=state.version,
            kind="performance",
            feature="log_loss",
            statistic="mann_whitney_log_loss",
            value=a.recent_loss,
            threshold=a.reference_loss + p.min_increase,
            p_value=a.p_value,
            window=p.window,
            change_point=datetime.fromtimestamp(a.change_at, UTC),
        )

    def rolling(self) -> Mapping[tuple[str, str], RollingWindow]:
        return {
            (v, variant): w for v, s in self.versions.items() for variant, w in s.rolling.items()
        }
