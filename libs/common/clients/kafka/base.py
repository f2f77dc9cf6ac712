"""What a service needs from the broker: publish messages, many at once, or raw bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from libs.common.schemas import Message

Outgoing = tuple[str, Message, str | None]
"""(topic, message, key) of one message to publish."""

RawOutgoing = tuple[str, str | None, bytes, Sequence[tuple[str, bytes]]]
"""(topic, key, value, headers) of one record published as it is (already serialised)."""


def schema_headers(message: Message) -> list[tuple[str, bytes]]:
    """The headers naming a record's schema: its message type and version. Written
    once here for every path that produces a message (direct, or via ingest's spool)."""
    return [
        ("message-type", type(message).__name__.encode()),
        ("message-version", str(message.message_version).encode()),
    ]


class Publisher(Protocol):
    async def publish(self, topic: str, message: Message, *, key: str | None = None) -> None:
        """Send `message` to `topic`, with trace context and schema headers.

        Returns once the broker acknowledged it (the effect is durable).
        """
        ...

    async def publish_many(self, items: Sequence[Outgoing]) -> None:
        """Send many messages in order and return once all are acknowledged."""
        ...

    async def publish_raw(self, topic: str, value: bytes, *, key: str | None = None) -> None:
        """Send bytes as they are (dead-letter replay)."""
        ...

    async def publish_raw_many(self, records: Sequence[RawOutgoing]) -> None:
        """Send serialised records in order with their own headers (plus the producer's);
        return once all are acknowledged (the outage spool's drain)."""
        ...
