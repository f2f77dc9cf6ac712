"""Many records to the broker in record batches built here, one per partition.

aiokafka's `send` costs about 17 µs of Python per record (its partitioner, a future
and an accumulator call per record); ingest publishes tens of thousands of records a
second, and that per-record path was a fifth of its CPU (docs/benchmarks.md, issue 9).
Here records are appended to one `BatchBuilder` per partition (aiokafka's C record
builder) and each full builder is submitted whole with `send_batch`, so the Python
work per record is one append. Keyed records go to the partition aiokafka's default
partitioner picks (murmur2 of the key), so they land where `send` would put them and
per-key order holds across both paths.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Sequence
from functools import lru_cache

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

Headers = Sequence[tuple[str, bytes]]
Record = tuple[str, bytes | None, bytes, Headers]
"""(topic, key, value, headers) of one serialised record."""


@lru_cache(maxsize=65536)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition index aiokafka's DefaultPartitioner gives `key` (Java-compatible
    murmur2), cached: the pure-Python hash costs microseconds and keys repeat."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def send_records(producer: AIOKafkaProducer, records: Iterable[Record]) -> None:
    """Send `records` and return once the broker acknowledged all of them.

    Records of one partition keep their order. A failed batch raises its error
    (KafkaError, KafkaTimeoutError) after the others were awaited.
    """
    partitions: dict[str, list[int]] = {}
    open_batches: dict[tuple[str, int], BatchBuilder] = {}
    acks: list[asyncio.Future[object]] = []
    for topic, key, value, headers in records:
        known = partitions.get(topic)
        if known is None:
            known = partitions[topic] = sorted(await producer.partitions_for(topic))
        if key is None:
            partition = random.choice(known)
        else:
            partition = known[partition_of(key, len(known))]
        where = (topic, partition)
        batch = open_batches.get(where)
        if batch is None:
            batch = open_batches[where] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            # Full (append closed it): submit it, the record opens the next one.
            acks.append(await producer.send_batch(batch, topic, partition=partition))
            batch = open_batches[where] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise MessageSizeTooLargeError(
                    f"a record of {len(value)} bytes does not fit one batch of {topic}"
                )
    for (topic, partition), batch in open_batches.items():
        batch.close()  # closed: sent without lingering
        acks.append(await producer.send_batch(batch, topic, partition=partition))
    if acks:
        await asyncio.gather(*acks)
