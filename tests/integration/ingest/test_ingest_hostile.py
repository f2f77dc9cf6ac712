"""Hostile input on the real ingest process (`python -m services.ingest.main`, session
broker and Redis): fuzzed records on signals.raw, and a flood of large bodies.

The flood runs with SIGNALOPS_MAX_CONCURRENT_REQUESTS=4: four slow uploads hold every
slot, forty large bodies are posted at once, and the process's peak memory is read
from /proc.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from libs.common.schemas import DeadLetter, Signal, utcnow
from libs.common.settings import Settings
from libs.common.testing import stop_service
from services.ingest.core import reasons
from tests.integration.ingest.ingest_server import (
    MakeIngestSettings,
    consume,
    eventually,
    ingest_env,
    read_values,
    spawn_ingest,
    wait_ready,
)
from tests.unit.ingest.hostile_bodies import VALID_SIGNAL, bodies, mutants, signals

pytestmark = pytest.mark.integration
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


@pytest.fixture(name="ingest")
def _ingest(
    make_ingest_settings: MakeIngestSettings, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], Settings]]:
    """The ingest process on a free port with four request slots; stopped after the test."""
    settings = asyncio.run(make_ingest_settings(max_concurrent_requests=SLOTS))
    proc = spawn_ingest(ingest_env(settings, "max_concurrent_requests"), tmp_path / "ingest.log")
    try:
        yield f"http://127.0.0.1:{settings.ingest_port}", proc, settings
    finally:
        stop_service(proc, timeout_s=30)


async def test_flood_of_large_bodies_is_shed_and_memory_stays_bounded(
    ingest: tuple[str, subprocess.Popen[bytes], Settings],
) -> None:
    """With every slot held by a slow upload, 40 concurrent 6 MiB bodies are all answered
    503 with Retry-After; the process's peak memory grows by far less than the bodies
    (240 MiB); the held uploads then complete and the service still answers."""
    url, proc, settings = ingest
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await wait_ready(client, proc)

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
    assert len(await consume(settings, settings.topics.valid, count=SLOTS * 10 + 1)) == (
        SLOTS * 10 + 1
    )


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
        await wait_ready(client, proc)
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
    valid = await read_values(settings, settings.topics.valid)
    letters = [DeadLetter.from_bytes(v) for v in await read_values(settings, settings.topics.dlq)]
    assert len(valid) == after["accepted"] and len(letters) == after["dead_lettered"]
    assert all(Signal.from_bytes(v).source == "sensors" for v in valid)
    assert all(d.reason in REASONS and d.detail for d in letters)


async def test_a_stalled_body_is_cut_off_and_frees_its_slot(
    make_ingest_settings: MakeIngestSettings, tmp_path: Path
) -> None:
    """Slowloris: with one request slot, a client that sends its headers and a few body
    bytes, then stalls, holds the slot only for body_timeout_s (503 meanwhile), then gets
    408 naming the limit, and the next client is served."""
    # 4 s: wide enough that a loaded machine still sees the slot held before the cut.
    settings = await make_ingest_settings(max_concurrent_requests=1, body_timeout_s=4.0)
    env = ingest_env(settings, "max_concurrent_requests", "body_timeout_s")
    proc = spawn_ingest(env, tmp_path / "ingest.log")
    url = f"http://127.0.0.1:{settings.ingest_port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await wait_ready(client, proc)
            reader, writer = await asyncio.open_connection("127.0.0.1", settings.ingest_port)
            writer.write(
                b"POST /v1/signals HTTP/1.1\r\nHost: ingest\r\n"
                b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{"sou'
            )
            await writer.drain()
            started = asyncio.get_running_loop().time()

            async def held() -> bool:  # the stalled upload has the only slot
                answer = await client.post("/v1/signals", json=[sensor("waiting")])
                return answer.status_code == 503

            await eventually(held, timeout_s=10)
            status_line = await asyncio.wait_for(reader.readline(), timeout=20)
            took = asyncio.get_running_loop().time() - started
            rest = await asyncio.wait_for(reader.read(), timeout=5)
            writer.close()
            assert status_line.startswith(b"HTTP/1.1 408"), status_line
            assert b"body_timeout" in rest and b"within 4 s" in rest
            assert 3.5 <= took < 15, took
            served = await client.post("/v1/signals", json=[sensor("after")])
            assert served.status_code == 202, served.text
    finally:
        stop_service(proc, timeout_s=30)
