"""What a handler receives: a decoded message and where it came from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiokafka import ConsumerRecord

T = TypeVar("T", covariant=True)
U = TypeVar("U")

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Delivery(Generic[T]):
    """One consumed record: `message` is the topic's schema, decoded (or the raw bytes
    for subscriptions without a schema).
    """

    message: T
    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: Headers = ()

    @property
    def origin(self) -> str:
        """Where the record sits: the same for every redelivery, so ids derived from it
        are deterministic.
        """
        return f"{self.topic}/{self.partition}/{self.offset}"

    @staticmethod
    def of(record: ConsumerRecord, message: U) -> Delivery[U]:
        return Delivery(
            message=message,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") if record.key else None,
            value=record.value or b"",
            headers=tuple(record.headers or ()),
        )


def raw(topic: str, value: bytes, *, partition: int = 0, offset: int = 0) -> Delivery[bytes]:
    """A delivery of raw bytes (tests and tools)."""
    return Delivery(value, topic, partition, offset, None, value)


def headers_of(deliveries: Sequence[Delivery[object]]) -> list[Headers]:
    return [d.headers for d in deliveries]
