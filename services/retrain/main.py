"""Retrain service wiring: `python -m services.retrain.main` (spawned by `signalops up`).

Reads retrain.requests + drift.events (group "retrain-trainer") and outcomes +
predictions (group "retrain-log"); writes models.events and the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

import ray

from libs.common.clients.kafka import (
    KafkaPublisher,
    Publisher,
    consume_batches,
    ensure_topics,
    make_consumer,
    stop_on_signals,
)
from libs.common.definitions import Definitions, load_definitions
from libs.common.observability import (
    configure_logging,
    configure_tracing,
    get_logger,
    serve_metrics,
)
from libs.common.offline import OfflineStore
from services.retrain.adapters.registry import MlflowRegistry, Registry
from services.retrain.bootstrap import bootstrap_models
from services.retrain.handlers import RetrainHandlers
from services.retrain.settings import RetrainSettings
from services.retrain.train import train_model

log = get_logger(__name__)

SERVICE = "retrain"
TRAINER_GROUP = "retrain-trainer"
LOG_GROUP = "retrain-log"


@dataclass
class RetrainApp:
    settings: RetrainSettings
    definitions: Definitions
    handlers: RetrainHandlers
    publisher: Publisher
    registry: Registry
    kafka: KafkaPublisher | None  # the publisher this app started and must stop

    async def run(self, stop: asyncio.Event) -> None:
        """Start up (topics, publisher, Ray, bootstrap), consume until `stop`, shut down."""
        s, topics = self.settings, self.settings.topics
        await ensure_topics(s.kafka_bootstrap, topics.all(), s.kafka_partitions)
        if self.kafka is not None:
            await self.kafka.start()
        connect_ray(s)
        trainer = make_consumer(
            s.kafka_bootstrap,
            [topics.retrain, topics.drift],
            group_id=TRAINER_GROUP,
            client_id=f"{SERVICE}-trainer",
        )
        logger = make_consumer(
            s.kafka_bootstrap,
            [topics.outcomes, topics.predictions],
            group_id=LOG_GROUP,
            client_id=f"{SERVICE}-log",
        )
        try:
            if s.bootstrap_enabled:
                for result in await asyncio.to_thread(
                    bootstrap_models, s, self.definitions, registry=self.registry
                ):
                    await self.handlers.publish_result(result)
            await trainer.start()
            await logger.start()
            log.info("retrain_consuming", models=[m.name for m in self.definitions.models])
            await asyncio.gather(
                consume_batches(trainer, self.handlers.on_trainer_batch, stop, service=SERVICE),
                consume_batches(logger, self.handlers.on_log_batch, stop, service=SERVICE),
            )
        finally:
            await trainer.stop()
            await logger.stop()
            log.info("retrain_stopped")
            if self.kafka is not None:
                await self.kafka.stop()


def build_app(
    settings: RetrainSettings,
    *,
    publisher: Publisher | None = None,
    registry: Registry | None = None,
) -> RetrainApp:
    """Wire the service; tests pass fakes for `publisher` and `registry`."""
    definitions = load_definitions(settings.definitions)
    registry = registry or MlflowRegistry.from_settings(settings)
    kafka = None
    if publisher is None:
        kafka = publisher = KafkaPublisher(settings.kafka_bootstrap, client_id=SERVICE)
    trainer = functools.partial(train_model, settings, definitions, registry=registry)
    handlers = RetrainHandlers(
        settings, definitions, publisher, trainer, OfflineStore(settings.offline_dir)
    )
    return RetrainApp(settings, definitions, handlers, publisher, registry, kafka)


def connect_ray(settings: RetrainSettings) -> None:
    """Join the running cluster (`signalops up`, or the tests' GCS address)."""
    if not ray.is_initialized():
        ray.init(address=settings.ray_address, log_to_driver=False)


async def _serve(app: RetrainApp) -> None:
    # ray.init installs its own SIGTERM handler (sys.exit), so connect first and let
    # ours, which finishes the current batch, replace it.
    connect_ray(app.settings)
    stop = asyncio.Event()
    stop_on_signals(stop)
    await app.run(stop)


def main() -> None:
    settings = RetrainSettings()
    configure_logging(SERVICE, settings.log_level)
    configure_tracing(SERVICE, settings.otlp_endpoint)
    serve_metrics(settings.retrain_metrics_port, settings.metrics_host, service=SERVICE)
    asyncio.run(_serve(build_app(settings)))


if __name__ == "__main__":
    main()
