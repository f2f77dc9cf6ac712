"""Records sent in batches built per partition (libs/common/clients/kafka/batching.py),
on the real broker (Tansu): every record acknowledged and readable, each key on the
partition aiokafka's own `send` picks, order per partition kept across many batches.
"""

from __future__ import annotations

from collections import defaultdict

from aiokafka import AIOKafkaProducer

from libs.common.clients.kafka import KafkaPublisher
from libs.common.clients.kafka.admin import ensure_topics_of
from libs.common.clients.kafka.batching import send_records
from libs.common.clients.kafka.reader import read_to_end
from libs.common.schemas import Message
from libs.common.settings import Settings


class Item(Message):
    n: int
    pad: str = ""


async def test_batches_keep_every_record_its_partition_and_order(  # type: ignore[no-untyped-def]
    make_settings, kafka_bootstrap: str
) -> None:
    settings: Settings = make_settings(kafka_bootstrap=kafka_bootstrap, kafka_partitions=4)
    topic, reference = settings.topics.valid, settings.topics.outcomes
    await ensure_topics_of(settings, [topic, reference])
    # 3,000 records of ~300 bytes over 4 partitions: many 16 KiB batches per partition.
    items = [Item(n=n, pad="x" * 250) for n in range(3000)]
    keys = [f"entity-{n % 97}" for n in range(3000)]
    publisher = KafkaPublisher(settings.kafka_bootstrap, client_id="batching-test")
    await publisher.start()
    plain = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await plain.start()
    try:
        await publisher.publish_many(list(zip([topic] * 3000, items, keys, strict=True)))
        # The reference: where aiokafka's own per-record send puts each key.
        for key in sorted(set(keys)):
            await plain.send_and_wait(reference, b"x", key=key.encode())
        # Unkeyed records are spread, and still all acknowledged.
        producer = publisher._producer
        await send_records(producer, [(topic, None, b'{"unkeyed": true}', [])] * 50)
    finally:
        await plain.stop()
        await publisher.stop()

    got = await read_to_end(settings.kafka_bootstrap, topic)
    keyed = [d for d in got if d.key is not None]
    assert len(keyed) == 3000 and len(got) == 3050
    assert sorted(Item.from_bytes(d.value).n for d in keyed) == list(range(3000))
    expected_partition = {
        d.key: d.partition for d in await read_to_end(settings.kafka_bootstrap, reference)
    }
    assert {d.key: d.partition for d in keyed} == expected_partition
    per_partition: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for d in keyed:
        per_partition[d.partition].append((d.offset, Item.from_bytes(d.value).n))
    for records in per_partition.values():
        numbers = [n for _, n in sorted(records)]
        assert numbers == sorted(numbers), "order within a partition changed"
    assert all(dict(d.headers).get("message-type") == b"Item" for d in keyed)
