"""Message -> core -> publish, for the four topics the retrain service reads.

Trainer side (group "retrain-trainer"): retrain requests and drift events become
training runs; each run's ModelChanged facts go to the models topic. Log side
(group "retrain-log"): outcomes and predictions become offline-store files.

Failure policy: the runtime dead-letters undecodable records; an unknown model or a
training run that fails is dead-lettered here with its reason (a poison request never
loops); a request whose id is already tagged on a registered version is not trained
again (redelivery after a crash or a rebalance). Only a failing publish or write
raises, and the runtime retries the batch.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from libs.common.clients.kafka import DeadLetters, Delivery, Publisher
from libs.common.definitions import Definitions
from libs.common.observability import extract_context, get_logger, tracer
from libs.common.offline import OUTCOMES, PREDICTIONS, OfflineStore
from libs.common.resilience import Policy, is_transient
from libs.common.schemas import DriftDetected, Outcome, PredictionMade, RetrainModel
from services.retrain.core import events
from services.retrain.core.drift.monitor import REQUESTED_BY as MONITOR
from services.retrain.core.offline_rows import batch_file_name, outcome_row, prediction_row
from services.retrain.core.results import TrainingResult
from services.retrain.errors import NoTrainingData, UnknownModel
from services.retrain.metrics import CHAMPION_AUC, OFFLINE_ROWS, TRAINING_RUNS, TRAINING_SECONDS
from services.retrain.settings import RetrainSettings

log = get_logger(__name__)

STAGE = "retrain"

# The monitor and the offline log read the same topics in separate groups: a run the
# monitor asked for may start before the log wrote the labels it counted.
LOG_CATCH_UP_S = 15.0
LOG_CATCH_UP_POLL_S = 1.0

Trainer = Callable[[str, str, Sequence[str], float | None], TrainingResult]
"""(model name, reason, request ids, data window start) -> result; blocking (runs in a
worker thread)."""

AnsweredBy = Callable[[str, str], str | None]
"""(model, request id) -> the version already registered for that request, or None."""


@dataclass(frozen=True)
class TrainingJob:
    """One validated reason to train a model, with the delivery that asked for it."""

    model: str
    reason: str
    delivery: Delivery[Any]
    since: float | None = None  # data window: rows as of this time or later

    @property
    def request_id(self) -> str:
        return str(self.delivery.message.event_id)


def _epoch(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()


def _counted_labels(job: TrainingJob) -> bool:
    """True when the monitor sent the ask after judging enough labels in its window
    (a performance drift, or its own retrain request), so the labels exist."""
    m = job.delivery.message
    if isinstance(m, DriftDetected):
        return m.kind == "performance"
    return isinstance(m, RetrainModel) and m.requested_by == MONITOR


def drift_reason(event: DriftDetected) -> str:
    """The training reason recorded for a drift event."""
    version = f" (version {event.version})" if event.version else ""
    return (
        f"drift: {event.statistic} of {event.feature} = {event.value:.4g} > "
        f"{event.threshold:.4g}{version}"
    )


class RetrainHandlers:
    """The service's handlers, bound to their dependencies (built by main.build_app).

    Args:
        settings: retrain settings (topics).
        definitions: the definitions (which models exist).
        publisher: where ModelChanged facts go.
        dead_letters: the runtime's dead-letter middleware (stage "retrain").
        trainer: runs one training (normally `train_model` bound to settings and registry).
        store: the offline store outcomes and predictions are appended to.
        answered_by: finds the version a request id already produced.
    """

    def __init__(
        self,
        settings: RetrainSettings,
        definitions: Definitions,
        publisher: Publisher,
        dead_letters: DeadLetters,
        trainer: Trainer,
        store: OfflineStore,
        answered_by: AnsweredBy = lambda _model, _request: None,
    ) -> None:
        self._topics = settings.topics
        self._models = {m.name for m in definitions.models}
        self._publisher = publisher
        self._dead_letters = dead_letters
        self._trainer = trainer
        self._store = store
        self._answered_by = answered_by
        self._files = Policy("offline-store", timeout_s=30.0)
        self._registry = Policy("mlflow", timeout_s=30.0, attempts=3)

    # trainer side -----------------------------------------------------------------
    async def on_trainer_batch(self, batch: list[Delivery[Any]]) -> None:
        """Retrain requests and drift events of one poll; one run per model per batch.

        The runtime pauses the partitions while this runs, so a training longer than
        the consumer's max_poll_interval keeps the group membership.
        """
        jobs: list[TrainingJob] = []
        for d in batch:
            if isinstance(d.message, RetrainModel):
                m = d.message
                reason = m.reason or f"requested by {m.requested_by}"
                jobs.append(TrainingJob(m.model, reason, d, _epoch(m.since)))
            elif isinstance(d.message, DriftDetected):
                e = d.message
                # Any drift retrains on what came after its change point (the model's
                # window policy decides how: `all` ignores it). A covariate drift has few
                # labels after it yet: that run is skipped, and the monitor asks again
                # once post_change_labels labels since the change point arrived.
                jobs.append(TrainingJob(e.model, drift_reason(e), d, _epoch(e.change_point)))
        await self._run(await self._known(jobs))

    async def _known(self, jobs: list[TrainingJob]) -> list[TrainingJob]:
        known, unknown = [], []
        for job in jobs:
            if job.model in self._models:
                known.append(job)
            else:
                error = UnknownModel(job.model, sorted(self._models))
                unknown.append(self._dead_letters.of(job.delivery, "unknown_model", str(error)))
        await self._dead_letters.reject_many(unknown)
        return known

    async def _run(self, jobs: list[TrainingJob]) -> None:
        by_model: dict[str, list[TrainingJob]] = defaultdict(list)
        for job in jobs:
            by_model[job.model].append(job)
        for model, asks in by_model.items():
            asks = await self._unanswered(model, asks)
            if not asks:
                continue
            reason = "; ".join(dict.fromkeys(j.reason for j in asks))
            # Coalesced asks train once: on the newest window any of them asks for.
            windows = [j.since for j in asks if j.since is not None]
            since = max(windows) if windows else None
            with tracer().start_as_current_span(
                "retrain.train",
                context=extract_context(list(asks[0].delivery.headers)),
                attributes={"model": model, "requests": len(asks)},
            ):
                failure = await self.train(
                    model,
                    reason,
                    [j.request_id for j in asks],
                    since,
                    labels_expected=any(_counted_labels(j) for j in asks),
                )
            if failure is not None:
                await self._dead_letters.reject_many(
                    [self._dead_letters.of(j.delivery, "training_failed", failure) for j in asks]
                )

    async def _unanswered(self, model: str, asks: list[TrainingJob]) -> list[TrainingJob]:
        """The asks no registered version answers yet.

        A redelivered ask is not trained again; its version is announced again instead,
        since the first delivery may have stopped between registering and publishing
        (serve re-reads the aliases on any model event, so nothing is missed).
        """
        out = []
        for job in asks:
            version = await self._registry.call_blocking(self._answered_by, model, job.request_id)
            if version is None:
                out.append(job)
                continue
            TRAINING_RUNS.labels(model, "duplicate").inc()
            log.info(
                "request_already_answered", model=model, request_id=job.request_id, version=version
            )
            again = events.registered(model, version, {}, f"{job.reason} (redelivered)")
            await self._publisher.publish(self._topics.models, again, key=model)
        return out

    async def train(
        self,
        model: str,
        reason: str,
        request_ids: Sequence[str] = (),
        since: float | None = None,
        *,
        labels_expected: bool = False,
    ) -> str | None:
        """Run one training and publish what it produced.

        Args:
            labels_expected: the ask was sent after the monitor judged enough labels in
                its window; a run that finds too few waits for the offline log (another
                consumer group) to catch up, for up to `LOG_CATCH_UP_S`.

        Returns:
            None when the run registered a version or was skipped for lack of data;
            the failure, as text, when it failed (the caller dead-letters the asks).
        """
        started = time.perf_counter()
        try:
            result = await self._train_waiting_for_the_log(
                model, reason, request_ids, since, labels_expected
            )
        except NoTrainingData as exc:
            log.warning("training_skipped", model=model, reason=reason, detail=str(exc))
            TRAINING_RUNS.labels(model, "skipped").inc()
            return None
        except Exception as exc:
            if is_transient(exc):
                # Ray, MLflow or the offline store is down: the runtime waits it out and
                # delivers the request again; it is not the request's fault.
                log.warning("training_interrupted", model=model, error=repr(exc))
                raise
            log.exception("training_failed", model=model, reason=reason)
            TRAINING_RUNS.labels(model, "failed").inc()
            return f"training {model} failed: {exc!r}"
        finally:
            TRAINING_SECONDS.labels(model).observe(time.perf_counter() - started)
        await self.publish_result(result)
        return None

    async def _train_waiting_for_the_log(
        self,
        model: str,
        reason: str,
        request_ids: Sequence[str],
        since: float | None,
        labels_expected: bool,
    ) -> TrainingResult:
        deadline = time.monotonic() + (LOG_CATCH_UP_S if labels_expected else 0.0)
        while True:
            try:
                return await asyncio.to_thread(self._trainer, model, reason, request_ids, since)
            except NoTrainingData:
                if time.monotonic() >= deadline:
                    raise
                log.info("waiting_for_the_offline_log", model=model, since=since)
                await asyncio.sleep(LOG_CATCH_UP_POLL_S)

    async def publish_result(self, result: TrainingResult) -> None:
        """Publish a run's ModelChanged facts (registered, then promoted) keyed by model."""
        await self._publisher.publish_many(
            [(self._topics.models, event, result.model) for event in result.events()]
        )
        TRAINING_RUNS.labels(result.model, "promoted" if result.promoted else "registered").inc()
        auc = result.metrics.get("auc", math.nan)
        if result.promoted and not math.isnan(auc):
            CHAMPION_AUC.labels(result.model).set(auc)

    # log side -----------------------------------------------------------------------
    async def on_log_batch(self, batch: list[Delivery[Any]]) -> None:
        """Outcomes and predictions of one poll, each appended to the offline store."""
        outcomes = [d for d in batch if isinstance(d.message, Outcome)]
        # Shadow scores answered no one: no label can name them, training must not see them.
        predictions = [
            d for d in batch if isinstance(d.message, PredictionMade) and not d.message.shadow
        ]
        await self._append(OUTCOMES, [(d, outcome_row(d.message)) for d in outcomes])
        await self._append(PREDICTIONS, [(d, prediction_row(d.message)) for d in predictions])

    async def _append(self, kind: str, rows: list[tuple[Delivery[Any], dict[str, object]]]) -> None:
        first: dict[tuple[str, int], int] = {}
        grouped: dict[tuple[str, int], list[dict[str, object]]] = defaultdict(list)
        for d, row in rows:
            tp = (d.topic, d.partition)
            first[tp] = min(first.get(tp, d.offset), d.offset)
            grouped[tp].append(row)
        for (topic, partition), part in grouped.items():
            name = batch_file_name(topic, partition, first[(topic, partition)])
            await self._files.call_blocking(self._store.append, kind, part, name=name)
            OFFLINE_ROWS.labels(kind).inc(len(part))
