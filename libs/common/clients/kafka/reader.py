"""Reading a topic as it is now, whole or its tail, without a group (operator tools,
and the drift monitor rebuilding its windows at start)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.common.clients.kafka.deliveries import Delivery


async def read_to_end(
    bootstrap: str, topic: str, *, client_id: str = "signalops-cli", within_s: float = 60.0
) -> list[Delivery[bytes]]:
    """Every record on `topic` up to the end offsets taken at the start.

    Reads until each partition reached its end (an empty poll is not the end), then
    drains until a poll comes back empty: Tansu reports the end of a partition as the
    last batch's base offset + 1, so records of that batch lie past the reported end.
    Raises TimeoutError after `within_s`.
    """
    return await read_tail(bootstrap, topic, last=None, client_id=client_id, within_s=within_s)


async def read_tail(
    bootstrap: str,
    topic: str,
    *,
    last: int | None,
    client_id: str = "signalops-cli",
    within_s: float = 60.0,
) -> list[Delivery[bytes]]:
    """The newest `last` records of each partition of `topic` (all of them when None),
    read as `read_to_end` reads. Raises TimeoutError after `within_s`.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, client_id=client_id
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
        if last is not None:
            for tp in tps:
                start = max(await consumer.position(tp), end[tp] - last)
                consumer.seek(tp, start)
        out: list[Delivery[bytes]] = []
        remaining = {tp for tp in tps if end[tp] > await consumer.position(tp)}
        async with asyncio.timeout(within_s):
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, records in batch.items():
                    out.extend(Delivery.of(r, r.value or b"") for r in records)
                    if records[-1].offset + 1 >= end[tp]:
                        remaining.discard(tp)
            while batch := await consumer.getmany(*tps, timeout_ms=500):
                for records in batch.values():
                    out.extend(Delivery.of(r, r.value or b"") for r in records)
        return out
    finally:
        await consumer.stop()
