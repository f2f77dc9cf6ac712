"""The drift monitor's adapter: predictions and outcomes in, drift events out.

    predictions (PredictionMade) + outcomes (Outcome), group "retrain-monitor"
        -> ModelMonitor per model (services/retrain/core/drift) -> drift.events,
           and retrain.requests (a retrain on the labels since a drift's change point)

References are read from the registry (the file stored with each version) the
first time a version is seen. Monitor state lives in memory and is rebuilt at start
from the log itself: `warm_up` feeds the newest records of both topics (the tail the
windows need) before the loop resumes from its committed offsets; records fed twice
are recognised by event id. Drift event ids derive from model, version, kind and
feature, so a drift re-detected after a restart is the same request to the trainer,
which trains a version for it once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from libs.common.clients.kafka import Delivery, Publisher, Subscription
from libs.common.clients.kafka.reader import read_tail
from libs.common.definitions import Definitions, ModelDefinition
from libs.common.observability import get_logger
from libs.common.registry import DRIFT_REFERENCE
from libs.common.resilience import Policy
from libs.common.schemas import (
    DriftDetected,
    Message,
    Outcome,
    PredictionMade,
    RetrainModel,
    stable_id,
)
from libs.common.settings import Topics
from services.retrain.core.drift.features import FeatureDriftPolicy
from services.retrain.core.drift.monitor import Finding, ModelMonitor, MonitorPolicy
from services.retrain.core.drift.performance import PerformancePolicy
from services.retrain.core.drift.reference import DriftReference
from services.retrain.metrics import (
    DRIFT_EVENTS,
    DRIFT_KS_PVALUE,
    DRIFT_PSI,
    LABELS_JOINED,
    ROLLING,
)

log = get_logger(__name__)

ReadFile = Callable[[str, str, str], str | None]
"""(model, version, file name) -> the text stored with the version, or None."""

MetricsOf = Callable[[str, str], dict[str, float]]
"""(model, version) -> the holdout metrics recorded when the version was trained."""


def monitor_policy(model: ModelDefinition) -> MonitorPolicy:
    """The model's drift thresholds from the definitions, as monitor policies."""
    d = model.drift
    return MonitorPolicy(
        features=FeatureDriftPolicy(
            window=d.min_samples,
            check_every=max(25, d.min_samples // 4),
            psi_threshold=d.psi,
            alpha=d.alpha,
        ),
        performance=PerformancePolicy(
            alpha=d.performance_alpha,
            min_increase=d.min_loss_increase,
            post_change_labels=d.post_change_labels,
        ),
        refit_labels=d.refit_labels,
    )


class DriftMonitorHandlers:
    def __init__(
        self,
        definitions: Definitions,
        publisher: Publisher,
        topics: Topics,
        read_file: ReadFile,
        metrics_of: MetricsOf | None = None,
    ) -> None:
        self.monitors = {
            m.name: ModelMonitor(m.name, monitor_policy(m)) for m in definitions.models
        }
        self._publisher = publisher
        self._topics = topics
        self._read_file = read_file
        self._metrics_of = metrics_of
        self._registry = Policy("mlflow", timeout_s=30.0, attempts=3)
        # Events found but not yet acknowledged by the broker: sent first next time, so a
        # failed publish (the batch is redelivered, its records already fed) loses none.
        self._outbox: list[Finding] = []
        self._feeding = asyncio.Lock()

    def subscription(
        self, *, group: str, name: str = "retrain monitor", max_attempts: int = 5
    ) -> Subscription:
        """The monitor's consume loop: predictions and outcomes into `on_batch`."""
        t = self._topics
        return Subscription(
            name=name,
            topics={t.predictions: PredictionMade, t.outcomes: Outcome},
            handler=self.on_batch,
            group=group,
            max_attempts=max_attempts,
        )

    async def warm_up(self, bootstrap: str, last: int) -> int:
        """Rebuild the windows from the newest `last` records per partition of both topics.

        Undecodable records are skipped here (the loop dead-letters them when it reaches
        them). Returns how many records were fed.
        """
        fed: list[Delivery[Any]] = []
        for topic, schema in (
            (self._topics.predictions, PredictionMade),
            (self._topics.outcomes, Outcome),
        ):
            for d in await read_tail(bootstrap, topic, last=last, client_id="retrain-warm-up"):
                try:
                    message: Message = schema.from_bytes(d.value)
                except ValidationError:
                    continue
                fed.append(Delivery(message, d.topic, d.partition, d.offset, d.key, d.value))
        await self.on_batch(fed)
        log.info("drift_monitor_warmed_up", records=len(fed))
        return len(fed)

    async def on_batch(self, batch: list[Delivery[Any]]) -> None:
        """Feed the batch in order to the model monitors; publish the drifts they find."""
        # The warm-up and the consume loop may overlap at start: one feeds at a time.
        async with self._feeding:
            await self._feed(batch)

    async def _feed(self, batch: list[Delivery[Any]]) -> None:
        events = self._outbox
        # Predictions first: a batch interleaves the two topics arbitrarily, and a label
        # read before its prediction could not be joined.
        ordered = sorted(batch, key=lambda d: not isinstance(d.message, PredictionMade))
        for d in ordered:
            message = d.message
            if isinstance(message, PredictionMade):
                monitor = self.monitors.get(message.model.name)
                if monitor is None or message.shadow:  # a shadow score answered no one
                    continue
                if message.model.variant != "fallback" and monitor.needs_reference(
                    message.model.version
                ):
                    await self._load_reference(monitor, message.model.version)
                if not monitor.seen(message.event_id):
                    events += monitor.on_prediction(message)
            elif isinstance(message, Outcome):
                monitor = self.monitors.get(message.model)
                if monitor is not None and not monitor.seen(message.event_id):
                    events += monitor.on_outcome(message)
        if events:
            await self._publisher.publish_many([self._outgoing(e) for e in events])
            self._outbox = []
            for e in events:
                if isinstance(e, RetrainModel):
                    log.info("retrain_after_drift", model=e.model, reason=e.reason)
                    continue
                DRIFT_EVENTS.labels(e.model, e.kind).inc()
                log.warning(
                    "drift_detected",
                    model=e.model,
                    version=e.version,
                    kind=e.kind,
                    feature=e.feature,
                    value=round(e.value, 4),
                    threshold=round(e.threshold, 4),
                    change_point=e.change_point.isoformat() if e.change_point else None,
                )
        self._export()

    def _outgoing(self, finding: Finding) -> tuple[str, Message, str]:
        if isinstance(finding, RetrainModel):
            return self._topics.retrain, finding, finding.model
        return self._topics.drift, _with_stable_id(finding), finding.model

    async def _load_reference(self, monitor: ModelMonitor, version: str) -> None:
        text = await self._registry.call_blocking(
            self._read_file, monitor.model, version, DRIFT_REFERENCE
        )
        reference = DriftReference.from_json(text) if text else None
        if reference is None:
            log.warning("drift_reference_missing", model=monitor.model, version=version)
        expected = None
        if self._metrics_of is not None:
            recorded = await self._registry.call_blocking(self._metrics_of, monitor.model, version)
            expected = recorded.get("log_loss")
        monitor.set_reference(version, reference, expected)

    def _export(self) -> None:
        for name, monitor in self.monitors.items():
            counts = monitor.counts
            for how, n in vars(counts).items():
                LABELS_JOINED.labels(name, how).set(n)
            for version, state in monitor.versions.items():
                for detector in (state.inputs, state.scores):
                    if detector is None:
                        continue
                    for column, check in detector.last.items():
                        DRIFT_PSI.labels(name, version, column).set(check.psi)
                        DRIFT_KS_PVALUE.labels(name, version, column).set(check.p_value)
            for (version, variant), window in monitor.rolling().items():
                metrics = window.metrics()
                if metrics is None:
                    continue
                for metric, value in _as_dict(metrics).items():
                    if not math.isnan(value):
                        ROLLING.labels(name, version, variant, metric).set(value)


def _as_dict(metrics: Any) -> Mapping[str, float]:
    return {k: float(v) for k, v in vars(metrics).items()}


def _with_stable_id(event: DriftDetected) -> DriftDetected:
    return event.model_copy(
        update={
            "event_id": stable_id("drift", event.model, event.version, event.kind, event.feature)
        }
    )
