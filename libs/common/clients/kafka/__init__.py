"""Kafka clients: the Publisher interface, the aiokafka adapter and an in-memory fake."""

from libs.common.clients.kafka.base import Publisher
from libs.common.clients.kafka.kafka import (
    KafkaPublisher,
    consume_batches,
    decode_or_dead_letter,
    ensure_topics,
    make_consumer,
    message_key,
    stop_on_signals,
)
from libs.common.clients.kafka.memory import MemoryPublisher

__all__ = [
    "KafkaPublisher",
    "MemoryPublisher",
    "Publisher",
    "consume_batches",
    "decode_or_dead_letter",
    "ensure_topics",
    "make_consumer",
    "message_key",
    "stop_on_signals",
]
