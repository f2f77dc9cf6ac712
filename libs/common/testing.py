"""Helpers for handler tests: deliveries as the Kafka runtime would hand them over."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator, Sequence
from typing import TypeVar

from libs.common.clients.kafka.deliveries import Delivery
from libs.common.schemas import Message

M = TypeVar("M", bound=Message)


def delivery(
    topic: str, message: M, offset: int = 0, *, partition: int = 0, key: str | None = None
) -> Delivery[M]:
    """One decoded delivery of `message` at topic/partition/offset."""
    return Delivery(message, topic, partition, offset, key, message.to_bytes())


def deliveries(
    topic: str, messages: Sequence[M], first_offset: int = 0, *, partition: int = 0
) -> list[Delivery[M]]:
    """Consecutive deliveries of `messages`, starting at `first_offset`."""
    return [
        delivery(topic, m, first_offset + i, partition=partition) for i, m in enumerate(messages)
    ]


def raw_delivery(
    topic: str, value: bytes, offset: int = 0, key: str | None = None
) -> Delivery[bytes]:
    """A delivery of raw bytes (subscriptions without a schema)."""
    return Delivery(value, topic, 0, offset, key, value)


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` for the block (a broker or Redis that stops answering), then SIGCONT."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
