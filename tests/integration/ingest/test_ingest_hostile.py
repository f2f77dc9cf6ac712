"""Hostile input on the real ingest process (`python -m services.ingest.main`, session
broker and Redis): fuzzed records on signals.raw, and a flood of large bodies.

The flood runs with SIGNALOPS_MAX_CONCURRENT_REQUESTS=4: four slow uploads hold every
slot, forty large bodies are posted at once, and the process's peak memory is read
from /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from libs.common.clients.kafka import ensure_topics
from libs.common.net import free_port
from libs.common.schemas import DeadLetter, Signal, utcnow
from libs.common.settings import Settings
from services.ingest.core import reasons
from tests.unit.ingest.hostile_bodies import VALID_SIGNAL, bodies, mutants, signals

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
SLOTS = 4
FLOOD = 40
MiB = 1024 * 1024
REASONS = {v for k, v in vars(reasons).items() if k.isupper()}
# Hostile bodies, one per Kafka record (an array is one invalid record here); the
# valid template's time is replaced by the current time when produced.
TEMPLATE_TIME = str(VALID_SIGNAL["event_time"]).encode()
raw_values = bodies(signals | mutants(VALID_SIGNAL), "signals").map(lambda b: b.data)


def sensor(entity_id: str) -> dict[str, Any]:
    return {
        "source": "sensors",
        "entity_id": entity_id,
        "schema_version": 1,
        "event_time": utcnow().isoformat(),
        "fields": {"temperature": 20.5, "vibration": 1.0, "status": "ok"},
    }


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a process, in KiB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in lines) if k.startswith("Vm")
    }


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float) -> None:
    """Poll `check` until it holds; TimeoutError after `timeout_s` (never a bare sleep)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.1)


@pytest.fixture(name="ingest")
def _ingest(
    make_settings: Callable[..., Settings],
    kafka_bootstrap: str,
    redis_url: str,
    unique: str,
    tmp_path: Path,
) -> Iterator[tuple[str, subprocess.Popen[bytes], Settings]]:
    """The ingest process on a free port with four request slots; stopped after the test."""
    settings = make_settings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url)
    asyncio.run(ensure_topics(kafka_bootstrap, settings.topics.all(), settings.kafka_partitions))
    port = free_port()
    env = {
        **os.environ,
        "SIGNALOPS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SIGNALOPS_REDIS_URL": redis_url,
        "SIGNALOPS_INGEST_PORT": str(port),
        "SIGNALOPS_DEFINITIONS": str(settings.definitions),
        "SIGNALOPS_DATA_DIR": str(settings.data_dir),
        "SIGNALOPS_CONSUMER_GROUP": f"ingest-{unique}",
        "SIGNALOPS_KAFKA_PARTITIONS": str(settings.kafka_partitions),
        "SIGNALOPS_MAX_CONCURRENT_REQUESTS": str(SLOTS),
    }
    env.update({f"SIGNALOPS_TOPICS__{k.upper()}": v for k, v in settings.topics})
    log = tmp_path / "ingest.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.ingest.main"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", proc, settings
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def count_records(settings: Settings, topic: str, *, at_least: int) -> int:
    """Records on `topic` once at least `at_least` arrived (bounded wait)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    n = 0
    try:
        async with asyncio.timeout(60):
            while n < at_least:
                n += sum(len(p) for p in (await consumer.getmany(timeout_ms=500)).values())
    finally:
        await consumer.stop()
    return n


async def test_flood_of_large_bodies_is_shed_and_memory_stays_bounded(
    ingest: tuple[str, subprocess.Popen[bytes], Settings],
) -> None:
    """With every slot held by a slow upload, 40 concurrent 6 MiB bodies are all answered
    503 with Retry-After; the process's peak memory grows by far less than the bodies
    (240 MiB); the held uploads then complete and the service still answers."""
    url, proc, settings = ingest
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def ready() -> bool:
            assert proc.poll() is None, "ingest exited"
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, timeout_s=90)

        async def in_flight() -> float:
            text = (await client.get("/metrics")).text
            line = next(
                ln
                for ln in text.splitlines()
                if ln.startswith('signalops_http_in_flight_requests{service="ingest"}')
            )
            return float(line.split()[-1])

        # Four uploads send their first bytes and stall, holding every slot.
        release = asyncio.Event()
        batches = [[sensor(f"held-{i}-{j}") for j in range(10)] for i in range(SLOTS)]

        def slow_body(batch: list[dict[str, Any]]) -> AsyncIterator[bytes]:
            async def chunks() -> AsyncIterator[bytes]:
                text = json.dumps(batch).encode()
                yield text[:20]
                await release.wait()
                yield text[20:]

            return chunks()

        held = [
            asyncio.create_task(client.post("/v1/signals", content=slow_body(b))) for b in batches
        ]

        async def all_held() -> bool:
            return await in_flight() == SLOTS

        await eventually(all_held, timeout_s=30)
        before = memory_kib(proc.pid)

        # Forty large bodies at once: each is refused before it is read.
        filler = " " * 1100
        record = json.dumps(sensor("x" * 200))[:-1] + f',"pad":"{filler}"}}'
        body = ("[" + ",".join([record] * 4800) + "]").encode()
        assert len(body) > 6 * MiB
        async with httpx.AsyncClient(
            base_url=url, timeout=60, limits=httpx.Limits(max_connections=FLOOD)
        ) as flood:
            answers = await asyncio.gather(
                *(flood.post("/v1/signals", content=body) for _ in range(FLOOD))
            )
        after = memory_kib(proc.pid)
        assert [a.status_code for a in answers] == [503] * FLOOD
        assert {a.headers["retry-after"] for a in answers} == {"1"}
        assert answers[0].json()["error"] == "too_many_requests_in_flight"
        grown_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
        assert grown_mib < 48, f"peak memory grew {grown_mib:.0f} MiB during the flood"

        # The held uploads finish and are accepted; the slots come back.
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [202] * SLOTS
        assert await in_flight() == 0
        assert (await client.get("/healthz")).status_code == 200
        last = await client.post("/v1/signals", json=sensor("after-flood"))
        assert last.status_code == 202
    # Every accepted record reached signals.valid; none of the refused ones did.
    assert await count_records(settings, settings.topics.valid, at_least=SLOTS * 10 + 1) == (
        SLOTS * 10 + 1
    )


async def read_all(settings: Settings, topic: str) -> list[bytes]:
    """Every record on `topic`, read to its end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.kafka_partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        got: list[bytes] = []
        async with asyncio.timeout(60):
            while True:
                positions = [await consumer.position(tp) for tp in parts]
                if all(at >= ends[tp] for at, tp in zip(positions, parts, strict=True)):
                    return got
                batches = await consumer.getmany(timeout_ms=500)
                got.extend(r.value for part in batches.values() for r in part)
    finally:
        await consumer.stop()


def accounting(metrics_text: str, raw_topic: str) -> dict[str, float]:
    """Ingest's received and per-outcome counts for the raw topic (empty if not exported)."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.labels.get("input") != raw_topic or not sample.name.endswith("_total"):
                continue
            if sample.name == "signalops_ingest_received_total":
                counts["received"] = sample.value
            elif sample.name == "signalops_ingest_records_total":
                counts[sample.labels["outcome"]] = sample.value
    return counts


@settings(
    max_examples=6,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=st.lists(raw_values, min_size=5, max_size=25))
def test_fuzzed_raw_records_are_each_validated_or_dead_lettered(
    values: list[bytes], ingest: tuple[str, subprocess.Popen[bytes], Settings]
) -> None:
    """Hostile records produced to signals.raw: the process never stops consuming, and
    every record ends once on signals.valid or signals.dlq with a known reason (or is
    counted a duplicate): received = accepted + dead-lettered + duplicate."""
    url, proc, settings = ingest
    asyncio.run(_check_raw_fuzz(values, url, proc, settings))


async def _check_raw_fuzz(
    values: list[bytes], url: str, proc: subprocess.Popen[bytes], settings: Settings
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def ready() -> bool:
            assert proc.poll() is None, "ingest exited"
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, timeout_s=90)
        before = accounting((await client.get("/metrics")).text, settings.topics.raw)

        # Produce the example's records (the valid template made current).
        now = utcnow().isoformat().replace("+00:00", "Z").encode()
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, max_request_size=4 * MiB
        )
        await producer.start()
        try:
            for i, value in enumerate(values):
                key = None if i % 3 == 0 else f"k-{i}".encode()
                await producer.send_and_wait(
                    settings.topics.raw, value.replace(TEMPLATE_TIME, now), key=key
                )
        finally:
            await producer.stop()

        # Bounded wait until ingest has counted (and so published) every record.
        async def counted() -> bool:
            text = (await client.get("/metrics")).text
            got = accounting(text, settings.topics.raw).get("received", 0.0)
            return got - before.get("received", 0.0) >= len(values)

        await eventually(counted, timeout_s=60)
        after = accounting((await client.get("/metrics")).text, settings.topics.raw)
        assert (await client.get("/healthz")).status_code == 200
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    assert delta["received"] == len(values)
    assert delta["accepted"] + delta["dead_lettered"] + delta.get("duplicate", 0) == len(values)

    # The topics hold what was counted, over every example so far.
    valid = await read_all(settings, settings.topics.valid)
    letters = [DeadLetter.from_bytes(v) for v in await read_all(settings, settings.topics.dlq)]
    assert len(valid) == after["accepted"] and len(letters) == after["dead_lettered"]
    assert all(Signal.from_bytes(v).source == "sensors" for v in valid)
    assert all(d.reason in REASONS and d.detail for d in letters)
