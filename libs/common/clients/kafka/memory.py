"""An in-memory publisher: the test fake for handler tests."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from libs.common.clients.kafka.base import Outgoing, RawOutgoing
from libs.common.schemas import Message


@dataclass
class MemoryPublisher:
    sent: dict[str, list[tuple[str | None, bytes]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    messages: dict[str, list[Message]] = field(default_factory=lambda: defaultdict(list))
    # Headers of what publish_raw_many sent, per topic, parallel to its entries in `sent`.
    raw_headers: dict[str, list[list[tuple[str, bytes]]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    async def publish(self, topic: str, message: Message, *, key: str | None = None) -> None:
        self.messages[topic].append(message)
        self.sent[topic].append((key, message.to_bytes()))

    async def publish_many(self, items: Sequence[Outgoing]) -> None:
        for topic, message, key in items:
            await self.publish(topic, message, key=key)

    async def publish_raw(self, topic: str, value: bytes, *, key: str | None = None) -> None:
        self.sent[topic].append((key, value))

    async def publish_raw_many(self, records: Sequence[RawOutgoing]) -> None:
        for topic, key, value, headers in records:
            self.sent[topic].append((key, value))
            self.raw_headers[topic].append(list(headers))
