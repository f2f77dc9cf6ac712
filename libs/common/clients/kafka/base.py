"""What a service needs from the broker: publish messages, publish raw bytes."""

from __future__ import annotations

from typing import Protocol

from libs.common.schemas import Message


class Publisher(Protocol):
    async def publish(self, topic: str, message: Message, *, key: str | None = None) -> None:
        """Send `message` to `topic`, with trace context and schema headers.

        Returns once the broker acknowledged it (the effect is durable).
        """
        ...

    async def publish_raw(self, topic: str, value: bytes, *, key: str | None = None) -> None:
        """Send bytes as they are (dead-letter replay)."""
        ...
