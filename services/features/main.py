"""Features service: consumes signals.valid, keeps online and offline feature stores."""

from __future__ import annotations

import asyncio

from libs.common.clients.kafka import (
    KafkaPublisher,
    consume_batches,
    ensure_topics,
    make_consumer,
    stop_on_signals,
)
from libs.common.clients.redis import FeatureStore, RedisFeatureStore, make_redis
from libs.common.definitions import Definitions, load_definitions
from libs.common.observability import (
    configure_logging,
    configure_tracing,
    get_logger,
    serve_metrics,
)
from libs.common.offline import OfflineStore
from services.features.handlers import FeaturesHandler
from services.features.settings import FeaturesSettings


def build_app(
    settings: FeaturesSettings,
    *,
    publisher: KafkaPublisher,
    store: FeatureStore,
    definitions: Definitions,
) -> FeaturesHandler:
    offline = OfflineStore(settings.offline_dir) if settings.write_offline else None
    return FeaturesHandler(definitions, store, publisher, settings.topics, offline)


async def run(settings: FeaturesSettings, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (SIGTERM/SIGINT when run as a process)."""
    stop = stop or asyncio.Event()
    definitions = load_definitions(settings.definitions)
    await ensure_topics(settings.kafka_bootstrap, settings.topics.all(), settings.kafka_partitions)
    publisher = KafkaPublisher(settings.kafka_bootstrap, client_id="features")
    store = RedisFeatureStore(make_redis(settings.redis_url, settings.call_timeout_s))
    consumer = make_consumer(
        settings.kafka_bootstrap,
        [settings.topics.valid],
        group_id=settings.consumer_group,
        client_id="features",
    )
    handler = build_app(settings, publisher=publisher, store=store, definitions=definitions)
    await publisher.start()
    await consumer.start()
    get_logger(__name__).info("features_started", topic=settings.topics.valid)
    try:
        await consume_batches(consumer, handler.on_valid_signals, stop, service="features")
    finally:
        await consumer.stop()
        await publisher.stop()
        await store.close()


def main() -> None:
    settings = FeaturesSettings()
    configure_logging("features", settings.log_level)
    configure_tracing("features", settings.otlp_endpoint)
    serve_metrics(settings.features_metrics_port, settings.metrics_host, service="features")

    async def _main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await run(settings, stop)

    asyncio.run(_main())


if __name__ == "__main__":
    main()
