"""Features service: signals.valid in; online store, offline store and signals.dlq out.

signals.valid (Signal, group "features") -> FeaturesHandler.on_valid_signals
    -> Redis per-view states + vectors (one transaction per batch),
       Parquet signal rows by event date (compacted daily), signals.dlq

SIGNALOPS_FEATURES_WORKERS=N runs N of these processes in the group (workers.py).
"""

from __future__ import annotations

import asyncio

from libs.common.clients.kafka import KafkaRuntime, Subscription
from libs.common.clients.redis import FeatureStore, RedisFeatureStore, make_redis
from libs.common.definitions import load_definitions
from libs.common.lifecycle import OpsServer, stop_on_signals
from libs.common.observability import configure_logging, configure_tracing, get_logger
from libs.common.offline import OfflineStore
from libs.common.schemas import Signal
from services.features.compaction import compact_periodically
from services.features.decoding import decode_signal
from services.features.handlers import FeaturesHandler
from services.features.settings import FeaturesSettings
from services.features.workers import run_workers

SERVICE = "features"


def build_app(
    settings: FeaturesSettings, *, store: FeatureStore | None = None
) -> tuple[KafkaRuntime, FeaturesHandler]:
    """The runtime with its subscription, and the handler it feeds."""
    kafka = KafkaRuntime(settings, client_id=SERVICE)
    store = store or RedisFeatureStore(
        make_redis(settings.redis_url, settings.call_timeout_s), vector_ttl_s=settings.vector_ttl_s
    )
    offline = OfflineStore(settings.offline_dir) if settings.write_offline else None
    handler = FeaturesHandler(
        load_definitions(settings.definitions), store, kafka.dead_letters, settings.topics, offline
    )
    kafka.subscribe(
        Subscription(
            name=f"{SERVICE} {settings.topics.valid}",
            topics={settings.topics.valid: Signal},
            handler=handler.on_valid_signals,
            group=settings.consumer_group,
            max_attempts=settings.consumer_max_attempts,
            max_records=settings.batch_records,
            decode=decode_signal,  # Signal's rules, without a model per record
        )
    )
    return kafka, handler


async def run(settings: FeaturesSettings, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (SIGTERM/SIGINT when run as a process)."""
    stop = stop or asyncio.Event()
    kafka, handler = build_app(settings)
    ops = OpsServer(
        SERVICE, settings.metrics_host, settings.features_metrics_port, kafka.liveness, kafka.ready
    )
    await ops.start()
    await kafka.start()
    compaction = (
        asyncio.create_task(
            compact_periodically(handler.offline, settings.compact_every_s, stop),
            name="offline compaction",
        )
        if handler.offline is not None and settings.features_worker_index == 0
        else None
    )
    get_logger(__name__).info("features_started", topic=settings.topics.valid)
    try:
        await stop.wait()
    finally:
        if compaction is not None:
            compaction.cancel()
        await kafka.stop()
        await handler.store.close()
        await ops.stop()


def main() -> None:
    settings = FeaturesSettings()
    configure_logging(SERVICE, settings.log_level)
    if settings.features_workers > 1:
        raise SystemExit(run_workers(settings))
    configure_tracing(SERVICE, settings.otlp_endpoint)

    async def _main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop.set)
        await run(settings, stop)

    asyncio.run(_main())


if __name__ == "__main__":
    main()
