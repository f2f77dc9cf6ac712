"""Reading a topic page by page, from each partition's beginning to its end as it was
when the listing started (the operator's `signalops dlq` commands read signals.dlq so).

The position travels in an opaque cursor between calls, so a listing of any size costs
bounded memory on both sides and no state in ingest.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.common.errors import SignalopsError


class InvalidCursor(SignalopsError):
    """A listing's cursor that `Cursor.encode` did not write (answered 400).

    Operator action: start the listing again without a cursor.
    """

    def __init__(self, cursor: str) -> None:
        super().__init__(f"cursor {cursor[:40]!r} is not one ingest wrote; list again without it")


@dataclass(frozen=True)
class Cursor:
    """Per partition: the next offset to read and the end captured at the start."""

    positions: dict[int, tuple[int, int]]

    @property
    def remaining(self) -> int:
        return sum(max(0, end - nxt) for nxt, end in self.positions.values())

    def encode(self) -> str:
        raw = json.dumps({str(p): list(v) for p, v in self.positions.items()}).encode()
        return base64.urlsafe_b64encode(raw).decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises InvalidCursor for anything `encode` did not write."""
        try:
            doc = json.loads(base64.urlsafe_b64decode(text.encode()))
            positions = {int(p): (int(v[0]), int(v[1])) for p, v in doc.items()}
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, binascii.Error):
            raise InvalidCursor(text) from None
        return cls(positions)


@dataclass(frozen=True)
class Page:
    """Records of one page, as (partition, offset, value), and where the next starts
    (None when every partition reached its captured end)."""

    records: list[tuple[int, int, bytes]]
    cursor: Cursor | None
    remaining: int


class TopicPages:
    """Pages of `topic`, read without a consumer group.

    Args:
        bootstrap: the brokers.
        topic: the topic listed (signals.dlq for the dead-letter commands).
        within_s: time allowed for one page.
    """

    def __init__(
        self, bootstrap: str, topic: str, *, within_s: float = 30.0, client_id: str = "ingest-dlq"
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.within_s = within_s
        self.client_id = client_id

    async def page(self, cursor: Cursor | None, size: int) -> Page:
        """Up to `size` records from `cursor` (None: a new listing from the beginning).

        Raises TimeoutError when the broker does not answer within `within_s`.
        """
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            client_id=self.client_id,
        )
        await consumer.start()
        try:
            async with asyncio.timeout(self.within_s):
                if cursor is None:
                    cursor = await self._start(consumer)
                return await self._read(consumer, cursor, size)
        finally:
            await consumer.stop()

    async def _start(self, consumer: AIOKafkaConsumer) -> Cursor:
        parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            await consumer.client.force_metadata_update()
            parts = consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        if not tps:
            return Cursor({})
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        # Tansu reports a partition's end as its last batch's base offset + 1; a fetch
        # of that batch carries the true end (its high watermark).
        probe = [tp for tp in tps if end[tp] > begin[tp]]
        for tp in probe:
            consumer.seek(tp, end[tp] - 1)
        pending = set(probe)
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp in batch:
                end[tp] = max(end[tp], consumer.highwater(tp) or 0)
                pending.discard(tp)
        return Cursor({tp.partition: (begin[tp], end[tp]) for tp in tps})

    async def _read(self, consumer: AIOKafkaConsumer, cursor: Cursor, size: int) -> Page:
        positions = dict(cursor.positions)
        active = {TopicPartition(self.topic, p) for p, (nxt, end) in positions.items() if nxt < end}
        consumer.assign(list(active))
        for tp in active:
            consumer.seek(tp, positions[tp.partition][0])
        records: list[tuple[int, int, bytes]] = []
        while active and len(records) < size:
            batch = await consumer.getmany(
                *active, timeout_ms=1000, max_records=size - len(records)
            )
            for tp, got in batch.items():
                end = positions[tp.partition][1]
                for r in got:
                    if r.offset >= end:
                        break
                    records.append((tp.partition, r.offset, r.value or b""))
                    positions[tp.partition] = (r.offset + 1, end)
                if got and got[-1].offset + 1 >= end:
                    positions[tp.partition] = (end, end)
                if positions[tp.partition][0] >= end:
                    active.discard(tp)
        after = Cursor(positions)
        return Page(records, after if after.remaining else None, after.remaining)
