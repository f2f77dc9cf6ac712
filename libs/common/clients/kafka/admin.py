"""Topic creation with the cluster's replication settings."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from tenacity import AsyncRetrying, stop_after_delay, wait_random_exponential

from libs.common.observability.logging import get_logger
from libs.common.settings import Settings

log = get_logger(__name__)


async def ensure_topics(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    min_insync_replicas: int = 1,
    within_s: float = 30.0,
) -> None:
    """Create the topics that do not exist yet (idempotent; existing ones are kept)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(within_s), wait=wait_random_exponential(0.1, 2), reraise=True
    ):
        with attempt:
            await admin.start()
    try:
        existing = set(await admin.list_topics())
        configs = {"min.insync.replicas": str(min_insync_replicas)}
        missing = [
            NewTopic(t, partitions, replication_factor, topic_configs=configs)
            for t in topics
            if t not in existing
        ]
        if missing:
            await admin.create_topics(missing)
            log.info(
                "topics_created",
                topics=[t.name for t in missing],
                partitions=partitions,
                replication_factor=replication_factor,
            )
    finally:
        await admin.close()


async def ensure_topics_of(
    settings: Settings, topics: Sequence[str] | None = None, *, within_s: float = 30.0
) -> None:
    """`ensure_topics` with the partitions and replication the settings name."""
    await ensure_topics(
        settings.kafka_bootstrap,
        settings.topics.all() if topics is None else topics,
        settings.kafka_partitions,
        replication_factor=settings.replication_factor,
        min_insync_replicas=settings.min_insync_replicas,
        within_s=within_s,
    )
