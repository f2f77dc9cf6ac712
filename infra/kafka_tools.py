"""Operator tools over Kafka: publish one message, read a topic to its end, replay."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.common.clients.kafka import KafkaPublisher
from libs.common.schemas import Message


async def publish_one(bootstrap: str, topic: str, message: Message, key: str | None) -> None:
    pub = KafkaPublisher(bootstrap, client_id="signalops-cli")
    await pub.start()
    try:
        await pub.publish(topic, message, key=key)
    finally:
        await pub.stop()


async def read_to_end(bootstrap: str, topic: str, limit: int = 10_000) -> list[bytes]:
    """Every record currently on `topic` (up to `limit`), without joining a group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        client_id="signalops-cli",
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer.client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[bytes] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining and len(out) < limit:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            if not batch:
                break
            for tp, records in batch.items():
                out.extend(r.value or b"" for r in records)
                if records[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
        return out[:limit]
    finally:
        await consumer.stop()
