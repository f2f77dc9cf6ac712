"""Consumer construction: manual commits, the settings' session and poll limits."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer

from libs.common.settings import Settings


def make_consumer(
    settings: Settings,
    topics: Sequence[str],
    *,
    group_id: str | None,
    client_id: str,
    from_beginning: bool = True,
    max_records: int = 500,
) -> AIOKafkaConsumer:
    """A consumer with manual commits: offsets move only after the effect is durable.

    Tansu answers a JoinGroup only after half the session timeout, so the session
    timeout is also how long a group member waits to start (10 s -> 5 s).
    """
    session_ms = settings.consumer_session_timeout_ms
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        max_poll_records=max_records,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=min(3000, session_ms // 3),
        max_poll_interval_ms=settings.consumer_max_poll_interval_ms,
    )
