"""Kafka clients: one runtime (publisher + supervised consume loops), topic admin,
dead letters built in one place, and an in-memory publisher for handler tests.
"""

from libs.common.clients.kafka.admin import ensure_topics, ensure_topics_of
from libs.common.clients.kafka.base import Outgoing, Publisher, RawOutgoing
from libs.common.clients.kafka.consumer import make_consumer
from libs.common.clients.kafka.dead_letters import (
    DeadLetters,
    content_origin,
    dead_letter,
    dead_letter_id,
)
from libs.common.clients.kafka.deliveries import Delivery
from libs.common.clients.kafka.memory import MemoryPublisher
from libs.common.clients.kafka.publisher import KafkaPublisher
from libs.common.clients.kafka.runtime import Handler, KafkaRuntime, Subscription

__all__ = [
    "DeadLetters",
    "Delivery",
    "Handler",
    "KafkaPublisher",
    "KafkaRuntime",
    "MemoryPublisher",
    "Outgoing",
    "Publisher",
    "RawOutgoing",
    "Subscription",
    "content_origin",
    "dead_letter",
    "dead_letter_id",
    "ensure_topics",
    "ensure_topics_of",
    "make_consumer",
]
