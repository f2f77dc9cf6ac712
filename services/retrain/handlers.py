"""Message -> core -> publish, for the four topics the retrain service reads.

Trainer side (group "retrain-trainer"): retrain requests and drift events become
training runs; each run's ModelChanged facts go to the models topic. Log side
(group "retrain-log"): outcomes and predictions become offline-store files.

Failure policy (STYLE.md section 8): an undecodable record or an unknown model is a
dead letter; a failing training run is logged with its traceback and counted, publishes
nothing, and returns normally so its request offset is committed (a poison request
cannot loop). Only a failing publish or write raises, so the batch is redelivered.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiokafka import ConsumerRecord

from libs.common.clients.kafka import Publisher, decode_or_dead_letter, message_key
from libs.common.definitions import Definitions
from libs.common.observability import DEAD_LETTERS, MESSAGES, extract_context, get_logger, tracer
from libs.common.offline import OUTCOMES, PREDICTIONS, OfflineStore
from libs.common.schemas import (
    DriftDetected,
    Message,
    Outcome,
    PredictionMade,
    RecordRejected,
    RetrainModel,
)
from services.retrain.core.offline_rows import batch_file_name, outcome_row, prediction_row
from services.retrain.errors import NoTrainingData, UnknownModel
from services.retrain.metrics import CHAMPION_AUC, OFFLINE_ROWS, TRAINING_RUNS, TRAINING_SECONDS
from services.retrain.settings import RetrainSettings
from services.retrain.train import TrainingResult

log = get_logger(__name__)

STAGE = "retrain"
M = TypeVar("M", bound=Message)

Trainer = Callable[[str, str], TrainingResult]
"""(model name, reason) -> result; blocking (runs in a worker thread)."""


@dataclass(frozen=True)
class TrainingJob:
    """One validated reason to train a model, with the record that asked for it."""

    model: str
    reason: str
    record: ConsumerRecord


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
        publisher: where ModelChanged facts and dead letters go.
        trainer: runs one training (normally `train_model` bound to settings and registry).
        store: the offline store outcomes and predictions are appended to.
    """

    def __init__(
        self,
        settings: RetrainSettings,
        definitions: Definitions,
        publisher: Publisher,
        trainer: Trainer,
        store: OfflineStore,
    ) -> None:
        self._settings = settings
        self._topics = settings.topics
        self._models = {m.name for m in definitions.models}
        self._publisher = publisher
        self._trainer = trainer
        self._store = store

    # trainer side -----------------------------------------------------------------
    async def on_trainer_batch(self, records: list[ConsumerRecord]) -> None:
        """Retrain requests and drift events of one poll; one run per model per batch."""
        jobs = await self._retrain_jobs([r for r in records if r.topic == self._topics.retrain])
        jobs += await self._drift_jobs([r for r in records if r.topic == self._topics.drift])
        await self._run(jobs)

    async def on_retrain_request(self, records: Sequence[ConsumerRecord]) -> None:
        """RetrainModel records: train each named model; unknown models are dead letters."""
        await self._run(await self._retrain_jobs(records))

    async def on_drift(self, records: Sequence[ConsumerRecord]) -> None:
        """DriftDetected records: handled like a retrain request, reason from the event.

        This is the seam of the drift monitor: it publishes DriftDetected on the drift
        topic and the trainer picks it up here.
        """
        await self._run(await self._drift_jobs(records))

    async def _retrain_jobs(self, records: Sequence[ConsumerRecord]) -> list[TrainingJob]:
        decoded = await self._decode(records, RetrainModel)
        return await self._known(
            [(rec, m.model, m.reason or f"requested by {m.requested_by}") for rec, m in decoded]
        )

    async def _drift_jobs(self, records: Sequence[ConsumerRecord]) -> list[TrainingJob]:
        decoded = await self._decode(records, DriftDetected)
        return await self._known([(rec, e.model, drift_reason(e)) for rec, e in decoded])

    async def _decode(
        self, records: Sequence[ConsumerRecord], schema: type[M]
    ) -> list[tuple[ConsumerRecord, M]]:
        return await decode_or_dead_letter(
            records, schema, self._publisher, dlq_topic=self._topics.dlq, stage=STAGE
        )

    async def _known(self, asks: list[tuple[ConsumerRecord, str, str]]) -> list[TrainingJob]:
        jobs = []
        for rec, model, reason in asks:
            if model in self._models:
                jobs.append(TrainingJob(model, reason, rec))
                continue
            error = UnknownModel(model, sorted(self._models))
            await self._publisher.publish(
                self._topics.dlq,
                RecordRejected.of(
                    rec.value or b"",
                    stage=STAGE,
                    source=rec.topic,
                    reason="unknown_model",
                    detail=str(error),
                    topic=rec.topic,
                    key=message_key(rec),
                ),
                key=rec.topic,
            )
            DEAD_LETTERS.labels(STAGE, "unknown_model").inc()
            MESSAGES.labels(STAGE, rec.topic, "dead_letter").inc()
            log.warning("unknown_model", model=model, topic=rec.topic, offset=rec.offset)
        return jobs

    async def _run(self, jobs: list[TrainingJob]) -> None:
        by_model: dict[str, list[TrainingJob]] = defaultdict(list)
        for job in jobs:
            by_model[job.model].append(job)
        for model, asks in by_model.items():
            reason = "; ".join(dict.fromkeys(j.reason for j in asks))
            with tracer().start_as_current_span(
                "retrain.train",
                context=extract_context(asks[0].record.headers),
                attributes={"model": model, "requests": len(asks)},
            ):
                await self.train(model, reason)

    async def train(self, model: str, reason: str) -> TrainingResult | None:
        """Run one training and publish what it produced; never raises on a failed run.

        Returns:
            The result, or None when the run was skipped (no data) or failed.
        """
        started = time.perf_counter()
        try:
            result = await asyncio.to_thread(self._trainer, model, reason)
        except NoTrainingData as exc:
            log.warning("training_skipped", model=model, reason=reason, detail=str(exc))
            TRAINING_RUNS.labels(model, "skipped").inc()
            return None
        except Exception:
            log.exception("training_failed", model=model, reason=reason)
            TRAINING_RUNS.labels(model, "failed").inc()
            return None
        finally:
            TRAINING_SECONDS.labels(model).observe(time.perf_counter() - started)
        await self.publish_result(result)
        return result

    async def publish_result(self, result: TrainingResult) -> None:
        """Publish a run's ModelChanged facts (registered, then promoted) keyed by model."""
        for event in result.events():
            await self._publisher.publish(self._topics.models, event, key=result.model)
        TRAINING_RUNS.labels(result.model, "promoted" if result.promoted else "registered").inc()
        auc = result.metrics.get("auc", math.nan)
        if result.promoted and not math.isnan(auc):
            CHAMPION_AUC.labels(result.model).set(auc)

    # log side -----------------------------------------------------------------------
    async def on_log_batch(self, records: list[ConsumerRecord]) -> None:
        """Outcomes and predictions of one poll, each appended to the offline store."""
        await self.on_outcomes([r for r in records if r.topic == self._topics.outcomes])
        await self.on_predictions([r for r in records if r.topic == self._topics.predictions])

    async def on_outcomes(self, records: Sequence[ConsumerRecord]) -> None:
        """Outcome records -> one offline file per topic-partition (labels for training)."""
        decoded = await self._decode(records, Outcome)
        await self._append(OUTCOMES, records, [(rec, outcome_row(o)) for rec, o in decoded])

    async def on_predictions(self, records: Sequence[ConsumerRecord]) -> None:
        """PredictionMade records -> one offline file per topic-partition (join anchors)."""
        decoded = await self._decode(records, PredictionMade)
        await self._append(PREDICTIONS, records, [(rec, prediction_row(p)) for rec, p in decoded])

    async def _append(
        self,
        kind: str,
        records: Sequence[ConsumerRecord],
        rows: list[tuple[ConsumerRecord, dict[str, object]]],
    ) -> None:
        first: dict[tuple[str, int], int] = {}
        for rec in records:
            tp = (rec.topic, rec.partition)
            first[tp] = min(first.get(tp, rec.offset), rec.offset)
        grouped: dict[tuple[str, int], list[dict[str, object]]] = defaultdict(list)
        for rec, row in rows:
            grouped[(rec.topic, rec.partition)].append(row)
        for (topic, partition), part in grouped.items():
            name = batch_file_name(topic, partition, first[(topic, partition)])
            await asyncio.to_thread(self._store.append, kind, part, name=name)
            OFFLINE_ROWS.labels(kind).inc(len(part))
