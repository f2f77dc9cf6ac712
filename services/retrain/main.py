"""Retrain service wiring: `python -m services.retrain.main` (spawned by `signalops up`).

retrain.requests (RetrainModel) + drift.events (DriftDetected), group "retrain-trainer"
    (retrain.requests also gets the scheduled requests of models with retrain_every_s)
    -> RetrainHandlers.on_trainer_batch -> MLflow versions, models.events, signals.dlq
predictions (PredictionMade) + outcomes (Outcome), group "retrain-monitor"
    -> DriftMonitorHandlers.on_batch -> drift.events
outcomes (Outcome) + predictions (PredictionMade), group "retrain-log"
    -> RetrainHandlers.on_log_batch -> offline store
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import ray

from libs.common.clients.kafka import KafkaRuntime, Subscription
from libs.common.definitions import Definitions, load_definitions
from libs.common.lifecycle import OpsServer, stop_on_signals
from libs.common.observability import configure_logging, configure_tracing, get_logger
from libs.common.offline import OfflineStore
from libs.common.registry import MlflowRegistry, Registry
from libs.common.schemas import DriftDetected, Outcome, PredictionMade, RetrainModel
from services.retrain.bootstrap import bootstrap_models
from services.retrain.core.results import TrainingResult
from services.retrain.handlers import RetrainHandlers
from services.retrain.monitoring import DriftMonitorHandlers
from services.retrain.scheduler import RetrainScheduler
from services.retrain.settings import RetrainSettings
from services.retrain.train import train_model

log = get_logger(__name__)

SERVICE = "retrain"
TRAINER_GROUP = "retrain-trainer"
LOG_GROUP = "retrain-log"
MONITOR_GROUP = "retrain-monitor"


@dataclass
class RetrainApp:
    settings: RetrainSettings
    definitions: Definitions
    handlers: RetrainHandlers
    kafka: KafkaRuntime
    registry: Registry
    monitor: DriftMonitorHandlers

    async def run(self, stop: asyncio.Event) -> None:
        """Start up (ops server, topics, publisher, Ray, bootstrap), consume until `stop`."""
        s = self.settings
        ops = OpsServer(
            SERVICE, s.metrics_host, s.retrain_metrics_port, self.kafka.liveness, self.kafka.ready
        )
        await ops.start()
        connect_ray(s)
        try:
            if s.bootstrap_enabled:
                results = await asyncio.to_thread(
                    bootstrap_models, s, self.definitions, registry=self.registry
                )
            else:
                results = []
            await self.kafka.start()
            for result in results:
                await self.handlers.publish_result(result)
            if s.monitor_warm_up_records:
                await self.monitor.warm_up(s.kafka_bootstrap, s.monitor_warm_up_records)
            log.info("retrain_consuming", models=[m.name for m in self.definitions.models])
            schedule = RetrainScheduler(self.definitions.models, self.kafka, s.topics.retrain)
            await schedule.run(stop) if schedule.models else await stop.wait()
        finally:
            await self.kafka.stop()
            await ops.stop()
            log.info("retrain_stopped")


def build_app(settings: RetrainSettings, *, registry: Registry | None = None) -> RetrainApp:
    """Wire the service; tests pass a fake `registry`."""
    definitions = load_definitions(settings.definitions)
    registry = registry or MlflowRegistry.from_settings(settings)
    kafka = KafkaRuntime(settings, client_id=SERVICE)
    handlers = RetrainHandlers(
        settings,
        definitions,
        kafka,
        kafka.dead_letters,
        functools.partial(_train, settings, definitions, registry),
        OfflineStore(settings.offline_dir),
        answered_by=registry.version_for_request,
    )
    t = settings.topics
    kafka.subscribe(
        Subscription(
            name=f"{SERVICE} trainer",
            topics={t.retrain: RetrainModel, t.drift: DriftDetected},
            handler=handlers.on_trainer_batch,
            group=TRAINER_GROUP,
            max_attempts=settings.consumer_max_attempts,
            max_records=50,
        )
    )
    monitor = DriftMonitorHandlers(
        definitions, kafka, t, registry.read_file, registry.version_metrics
    )
    kafka.subscribe(
        monitor.subscription(
            group=MONITOR_GROUP,
            name=f"{SERVICE} monitor",
            max_attempts=settings.consumer_max_attempts,
        )
    )
    kafka.subscribe(
        Subscription(
            name=f"{SERVICE} log",
            topics={t.outcomes: Outcome, t.predictions: PredictionMade},
            handler=handlers.on_log_batch,
            group=LOG_GROUP,
            max_attempts=settings.consumer_max_attempts,
        )
    )
    return RetrainApp(settings, definitions, handlers, kafka, registry, monitor)


def _train(
    settings: RetrainSettings,
    definitions: Definitions,
    registry: Registry,
    model: str,
    reason: str,
    request_ids: Sequence[str],
    since: float | None,
) -> TrainingResult:
    return train_model(
        settings,
        definitions,
        model,
        reason,
        registry=registry,
        request_ids=request_ids,
        since=since,
    )


def connect_ray(settings: RetrainSettings) -> None:
    """Join the running cluster (`signalops up`, or the tests' GCS address)."""
    if not ray.is_initialized():
        ray.init(address=settings.ray_address, log_to_driver=False)


async def _serve(app: RetrainApp) -> None:
    # ray.init installs its own SIGTERM handler (sys.exit), so connect first and let
    # ours, which finishes the current batch, replace it.
    connect_ray(app.settings)
    stop = asyncio.Event()
    stop_on_signals(stop.set)
    await app.run(stop)


def main() -> None:
    settings = RetrainSettings()
    configure_logging(SERVICE, settings.log_level)
    configure_tracing(SERVICE, settings.otlp_endpoint)
    asyncio.run(_serve(build_app(settings)))


if __name__ == "__main__":
    main()
