"""Ingest against the real broker: HTTP and signals.raw in, valid and dead-letter topics out."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from libs.common.observability import configure_tracing, inject_headers, tracer
from libs.common.observability.tracing import header
from libs.common.schemas import DeadLetter, Signal, utcnow
from services.ingest.settings import IngestSettings
from tests.integration.ingest.ingest_server import (
    MakeIngestSettings,
    consume,
    eventually,
    ingest_env,
    serving,
    spawn_ingest,
    wait_ready,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session", name="tracing")
def _tracing() -> None:
    """A real tracer provider, so spans have ids that reach Kafka headers."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        configure_tracing("ingest-tests", None)


@pytest.fixture(name="settings")
async def _settings(make_ingest_settings: MakeIngestSettings) -> IngestSettings:
    """Ingest settings on the session broker with this test's own topics and group."""
    return await make_ingest_settings()


@pytest.fixture(name="ingest_url")
async def _ingest_url(settings: IngestSettings, tracing: None) -> AsyncIterator[str]:
    """build_app(settings) served by uvicorn on a free port, its lifespan owning Kafka."""
    async with serving(settings) as url:
        yield url


def sensor(entity_id: str, at: datetime, **fields: Any) -> dict[str, Any]:
    """A signal of the repository's `sensors` source (signalops.yaml)."""
    return {
        "source": "sensors",
        "entity_id": entity_id,
        "schema_version": 1,
        "event_time": at.isoformat().replace("+00:00", "Z"),
        "fields": {"temperature": 20.5, "vibration": 1.0, "status": "ok", **fields},
    }


def trace_id(rec: ConsumerRecord[bytes, bytes]) -> str:
    traceparent = header(rec.headers, "traceparent")
    assert traceparent, f"no traceparent header on {rec.topic} record {rec.key!r}"
    return traceparent.split("-")[1]


async def test_http_batch_reaches_valid_and_dead_letter_topics(
    settings: IngestSettings, ingest_url: str
) -> None:
    """A mixed POST lands valid signals keyed by entity and dead letters keyed by source;
    a posted outcome lands on the outcomes topic keyed by entity."""
    now = utcnow()
    wrong_type = sensor("device-9", now, temperature="hot")
    records = [
        sensor("device-0", now),
        wrong_type,
        sensor("device-1", now),
        42,
        sensor("device-2", now, pressure=101.0),
    ]
    body = json.dumps({"signals": records}, indent=2).encode()

    # Ready only once the producer runs and the broker answers; then post the batch.
    async with httpx.AsyncClient(base_url=ingest_url, timeout=30) as client:
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        response = await client.post("/v1/signals", content=body)
    assert response.status_code == 207
    answer = response.json()
    assert [a["index"] for a in answer["accepted"]] == [0, 2, 4]
    assert [(r["index"], r["reason"]) for r in answer["rejected"]] == [
        (1, "wrong_type"),
        (3, "invalid_envelope"),
    ]

    # The valid topic holds the three signals, keyed by entity id, with the answered ids.
    valid = await consume(settings, settings.topics.valid, count=3)
    got = {(r.key, Signal.from_bytes(r.value).event_id) for r in valid}
    assert got == {
        (f"device-{i}".encode(), a["event_id"]) for i, a in enumerate(answer["accepted"])
    }
    # The dead letters are keyed by source and hold each record's own bytes.
    dlq = await consume(settings, settings.topics.dlq, count=2)
    letters = {r.key: DeadLetter.from_bytes(r.value) for r in dlq}
    assert set(letters) == {b"sensors", b"http"}
    assert json.loads(letters[b"sensors"].original) == wrong_type
    assert letters[b"http"].original == b"42"
    assert letters[b"sensors"].original_key == "device-9"
    # One request, one trace: every published record carries the request span's context.
    assert len({trace_id(r) for r in valid + dlq}) == 1

    # Outcomes take the same path to their own topic.
    outcome = {
        "model": "default",
        "entity_id": "device-4",
        "label": 1,
        "event_time": (now - timedelta(hours=5)).isoformat(),
    }
    async with httpx.AsyncClient(base_url=ingest_url, timeout=30) as client:
        response = await client.post("/v1/outcomes", json=outcome)
    assert response.status_code == 202
    (rec,) = await consume(settings, settings.topics.outcomes, count=1)
    assert rec.key == b"device-4"
    assert json.loads(rec.value)["event_id"] == response.json()["accepted"][0]["event_id"]


async def test_raw_topic_is_validated_and_committed(
    settings: IngestSettings, ingest_url: str
) -> None:
    """Records produced to signals.raw are validated like HTTP ones; offsets then commit."""
    now = utcnow()
    late = sensor("device-l", now - timedelta(hours=2))
    raw = settings.topics.raw

    # An external source produces three records, the first inside its own trace.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        with tracer("external-source").start_as_current_span("produce"):
            await producer.send_and_wait(
                raw,
                json.dumps(sensor("device-r", now)).encode(),
                key=b"device-r",
                headers=inject_headers(),
            )
        await producer.send_and_wait(raw, b"temperature=20", key=b"k-1")
        await producer.send_and_wait(raw, json.dumps(late).encode(), key=b"device-l")
    finally:
        await producer.stop()

    # The service's raw consumer validates them: one valid signal, two dead letters.
    (valid,) = await consume(settings, settings.topics.valid, count=1)
    assert valid.key == b"device-r"
    assert Signal.from_bytes(valid.value).fields["temperature"] == 20.5
    assert trace_id(valid)
    dlq = await consume(settings, settings.topics.dlq, count=2)
    letters = [(DeadLetter.from_bytes(r.value), r.key) for r in dlq]
    assert sorted(
        (d.reason, d.source, d.original_topic, d.original_key, key) for d, key in letters
    ) == [
        ("invalid_json", raw, raw, "k-1", raw.encode()),
        ("too_late", "sensors", raw, "device-l", b"sensors"),
    ]

    # Offsets are committed once the effects are durable (bounded wait for the commit),
    # read by a consumer of the same group that does not join it.
    observer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await observer.start()
    partitions = [TopicPartition(raw, p) for p in range(settings.kafka_partitions)]
    try:

        async def committed() -> bool:
            return sum([await observer.committed(tp) or 0 for tp in partitions]) == 3

        await eventually(committed, timeout_s=30)
    finally:
        await observer.stop()


async def test_killed_raw_consumer_fails_healthz_naming_it(
    settings: IngestSettings, ingest_url: str
) -> None:
    """The signals.raw consume loop killed inside ingest: /healthz answers 503 and names
    the loop (an orchestrator restarts the pod), /readyz too; never a green zombie.
    """
    async with httpx.AsyncClient(base_url=ingest_url, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        name = f"consume ingest {settings.topics.raw}"
        [task] = [t for t in asyncio.all_tasks() if t.get_name() == name]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        r = await http.get("/healthz")
        assert r.status_code == 503
        [problem] = r.json()["problems"]
        assert settings.topics.raw in problem and "stopped" in problem
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and settings.topics.raw in ready.json()["reason"]


async def test_python_dash_m_entry_point_serves_and_stops_on_sigterm(
    settings: IngestSettings, tmp_path: Path
) -> None:
    """`python -m services.ingest.main` (what `signalops up` spawns) serves, then exits 0."""
    env = ingest_env(settings)
    log = tmp_path / "ingest.log"
    proc = spawn_ingest(env, log)
    try:
        # Bounded wait until it is ready, then one signal end to end.
        url = f"http://127.0.0.1:{settings.ingest_port}"
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            await wait_ready(client, proc, log)
            response = await client.post("/v1/signals", json=sensor("device-m", utcnow()))
        assert response.status_code == 202
        (rec,) = await consume(settings, settings.topics.valid, count=1)
        assert rec.key == b"device-m"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    output = log.read_text()
    # uvicorn finishes its graceful shutdown, then re-raises the SIGTERM it caught.
    assert code in (0, -signal.SIGTERM), output[-3000:]
    assert "Application shutdown complete" in output
    assert '"event": "kafka_started"' in output  # structured JSON logs
