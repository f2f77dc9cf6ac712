"""Operator tools over Kafka: publish one message, read a topic to its end."""

from __future__ import annotations

from libs.common.clients.kafka import KafkaPublisher
from libs.common.clients.kafka.reader import read_to_end
from libs.common.schemas import Message

__all__ = ["publish_one", "read_to_end", "read_values"]


async def publish_one(bootstrap: str, topic: str, message: Message, key: str | None) -> None:
    pub = KafkaPublisher(bootstrap, client_id="signalops-cli")
    await pub.start()
    try:
        await pub.publish(topic, message, key=key)
    finally:
        await pub.stop()


async def read_values(bootstrap: str, topic: str) -> list[bytes]:
    """The values of every record now on `topic`."""
    return [d.value for d in await read_to_end(bootstrap, topic)]
