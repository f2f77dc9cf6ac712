"""The outage spool against the real broker: paused (SIGSTOP) under load, ingest killed
with a full spool and restarted, and a full spool answering 503."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import ConsumerRecord

from libs.common.binaries import tansu_command
from libs.common.net import free_port
from libs.common.observability.tracing import header
from libs.common.schemas import DeadLetter, Signal, utcnow
from libs.common.testing import paused, stop_service
from services.ingest.settings import IngestSettings
from tests.integration.ingest.ingest_server import (
    MakeIngestSettings,
    consume,
    eventually,
    ingest_env,
    serving_client,
    spawn_ingest,
    tail,
    topic_reader,
    wait_ready,
)

pytestmark = pytest.mark.integration
PAUSE_S = 10.0
ENTITIES = 10


@pytest.fixture(name="settings")
async def _settings(make_ingest_settings: MakeIngestSettings, tmp_path: Path) -> IngestSettings:
    """Ingest on the session broker and Redis, its own topics and a private spool that
    takes over after 1 s without an acknowledgement."""
    return await make_ingest_settings(spool_dir=tmp_path / "spool", spool_publish_timeout_s=1.0)


class Poster:
    """One client posting batches in sequence; remembers what ingest accepted.

    Record `seq` has event time base + seq ms, so order per entity is checkable.
    """

    def __init__(self, client: httpx.AsyncClient, batch: int = 50) -> None:
        self.client = client
        self.batch = batch
        self.base = utcnow() - timedelta(minutes=30)
        self.seq = 0
        self.accepted: dict[str, datetime] = {}  # event id -> event time
        self.statuses: list[int] = []
        self.refused: list[httpx.Response] = []

    def record(self, seq: int) -> dict[str, Any]:
        at = self.base + timedelta(milliseconds=seq)
        return {
            "source": "sensors",
            "entity_id": f"device-{seq % ENTITIES}",
            "event_time": at.isoformat().replace("+00:00", "Z"),
            # Every field of the source: no schema-drift event (not this test's subject).
            "fields": {"temperature": 20.5, "vibration": 1.0, "pressure": 1.0, "status": "ok"},
        }

    async def post_once(self) -> httpx.Response:
        first, self.seq = self.seq, self.seq + self.batch
        records = [self.record(n) for n in range(first, self.seq)]
        response = await self.client.post("/v1/signals", json=records)
        self.statuses.append(response.status_code)
        if response.status_code == 202:
            for answer, rec in zip(response.json()["accepted"], records, strict=True):
                self.accepted[answer["event_id"]] = datetime.fromisoformat(rec["event_time"])
        else:
            self.refused.append(response)
        return response

    async def post_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.post_once()
            await asyncio.sleep(0.01)


async def read_valid(
    settings: IngestSettings, wanted: set[str], *, timeout_s: float = 120
) -> list[ConsumerRecord[bytes, bytes]]:
    """signals.valid from the beginning until every id in `wanted` was seen."""
    got: list[ConsumerRecord[bytes, bytes]] = []
    seen: set[str] = set()
    async with (
        topic_reader(settings, settings.topics.valid) as consumer,
        asyncio.timeout(timeout_s),
    ):
        while not wanted <= seen:
            batches = await consumer.getmany(timeout_ms=500)
            for part in batches.values():
                for r in part:
                    got.append(r)
                    seen.add(Signal.from_bytes(r.value).event_id)
    return got


def check_delivery(
    records: list[ConsumerRecord[bytes, bytes]], accepted: dict[str, datetime]
) -> int:
    """Every accepted record is on the topic; per entity, first copies in event order.

    Returns:
        How many copies beyond the first were delivered (at-least-once duplicates).
    """
    by_entity: dict[bytes, list[tuple[int, Signal]]] = defaultdict(list)
    for r in records:
        by_entity[r.key or b""].append((r.offset, Signal.from_bytes(r.value)))
    duplicates = 0
    for key, items in by_entity.items():
        firsts: list[datetime] = []
        seen: set[str] = set()
        for _, s in sorted(items, key=lambda t: t[0]):
            assert s.entity_id.encode() == key
            if s.event_id in seen:
                duplicates += 1
                continue
            seen.add(s.event_id)
            firsts.append(s.event_time)
        assert firsts == sorted(firsts), f"{key!r} out of order"
    delivered = {Signal.from_bytes(r.value).event_id for r in records}
    assert set(accepted) == delivered  # nothing lost, nothing unasked for
    return duplicates


async def spool_status(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text  # ready while spooling
    body: dict[str, Any] = response.json()
    return body.get("spooling", {})


async def test_broker_paused_under_load_loses_nothing_and_keeps_entity_order(
    settings: IngestSettings, kafka_broker: Any
) -> None:
    """The broker frozen for 10 s while a client posts continuously: every request is
    answered 202, every accepted record reaches signals.valid in per-entity order, and
    the spool drains to empty after SIGCONT."""
    async with serving_client(settings) as client:
        poster = Poster(client)
        stop = asyncio.Event()
        # Load before, during and after the pause.
        loading = asyncio.create_task(poster.post_until(stop))
        try:
            await eventually(lambda: _at_least(poster, 20), timeout_s=30)
            with paused(kafka_broker.pid):
                frozen_at = time.monotonic()
                await eventually(lambda: _spooling(client), timeout_s=PAUSE_S)
                during = await spool_status(client)
                # The outage itself lasts a fixed time, not a synchronisation.
                await asyncio.sleep(max(0.0, PAUSE_S - (time.monotonic() - frozen_at)))
            posted_at_resume = poster.seq
            await eventually(
                lambda: _at_least(poster, posted_at_resume // poster.batch + 20), timeout_s=60
            )
        finally:
            stop.set()
            await loading
        # The spool empties once the broker is back, and /readyz stops reporting it.
        await eventually(lambda: _drained(client), timeout_s=90)
        metrics = (await client.get("/metrics")).text

    assert set(poster.statuses) == {202}
    assert during["records"] > 0 and during["bytes"] > 0
    records = await read_valid(settings, set(poster.accepted))
    duplicates = check_delivery(records, poster.accepted)
    print(
        f"\naccepted {len(poster.accepted)} records in {len(poster.statuses)} requests; "
        f"spooled at the check {during['records']}; duplicates {duplicates}"
    )
    # A publish that timed out is tracked: if it lands after all, the drainer skips its
    # records. Copies come only from the batch in flight at the freeze, when the
    # producer gave up on it (its ~11 s timeout) although the broker had it.
    assert duplicates <= poster.batch
    assert "signalops_ingest_spool_records 0.0" in metrics
    assert _metric(metrics, "signalops_ingest_spool_drained_total") >= during["records"]


async def test_ingest_killed_with_records_spooled_drains_them_after_restart(
    settings: IngestSettings, kafka_broker: Any, tmp_path: Path
) -> None:
    """Records spooled while the broker is frozen, a dead letter among them, survive
    SIGKILL of ingest: after the broker returns, a restarted ingest publishes them all,
    then its spool is empty."""
    env = ingest_env(settings, "spool_dir", "spool_publish_timeout_s")
    url = f"http://127.0.0.1:{settings.ingest_port}"
    first = spawn_ingest(env, tmp_path / "first.log")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await wait_ready(client, first, tmp_path / "first.log")
            poster = Poster(client, batch=20)
            await poster.post_once()  # through the broker
            with paused(kafka_broker.pid):
                for _ in range(10):
                    await poster.post_once()  # the first waits 1 s, then all spool
                # A rejected record is spooled too, as its dead letter.
                bad = poster.record(10_000) | {"fields": {"temperature": "hot"}}
                assert (await client.post("/v1/signals", json=[bad])).status_code == 422
                assert (await spool_status(client))["records"] > 0
                first.kill()  # a crash: no shutdown, no drain
                await asyncio.to_thread(first.wait, 30)
    finally:
        if first.poll() is None:
            first.kill()
    assert set(poster.statuses) == {202}

    # The broker is back; a new ingest on the same spool directory drains it first.
    second = spawn_ingest(env, tmp_path / "second.log")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await wait_ready(client, second, tmp_path / "second.log")
            await eventually(lambda: _drained(client), timeout_s=60)
            poster.client = client
            await poster.post_once()  # and new records go straight through again
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.to_thread(second.wait, 30)
    records = await read_valid(settings, set(poster.accepted))
    check_delivery(records, poster.accepted)
    # Drained as spooled: each record keeps its schema headers and the trace of the
    # request that sent it (one trace id per accepted request, spooled or not).
    assert {
        (header(r.headers, "producer"), header(r.headers, "message-type")) for r in records
    } == {("ingest", "Signal")}
    traces = {header(r.headers, "traceparent") for r in records}
    assert None not in traces and len(traces) == len(poster.statuses)
    assert '"event": "spool_recovered"' in tail(tmp_path / "second.log", 10**7)
    [letter] = await consume(settings, settings.topics.dlq, count=1)
    assert DeadLetter.from_bytes(letter.value).original_key == bad["entity_id"]


async def test_a_full_spool_answers_503_with_retry_after(
    settings: IngestSettings, kafka_broker: Any
) -> None:
    """With the broker frozen and the spool at its limit, a post is refused 503 with
    Retry-After (the client keeps its records); what was accepted still arrives."""
    small = settings.model_copy(update={"spool_max_bytes": 8 * 1024})
    async with serving_client(small) as client:
        poster = Poster(client, batch=5)
        with paused(kafka_broker.pid):
            while not poster.refused:
                assert poster.seq < 1000, "the spool never filled"
                await poster.post_once()
            refused = poster.refused[0]
            assert refused.status_code == 503
            assert int(refused.headers["Retry-After"]) > 0
            assert refused.json()["error"] == "spool_full"
            assert (await client.get("/readyz")).status_code == 503  # full: out of rotation
        await eventually(lambda: _drained(client), timeout_s=60)
        # The refused batch, retried after the outage, is accepted.
        retried = await client.post("/v1/signals", json=_body(refused))
        assert retried.status_code == 202
        for answer in retried.json()["accepted"]:
            poster.accepted[answer["event_id"]] = datetime.fromisoformat(
                _body(refused)[answer["index"]]["event_time"]
            )
    records = await read_valid(settings, set(poster.accepted))
    check_delivery(records, poster.accepted)


# ---- helpers --------------------------------------------------------------------------


async def _at_least(poster: Poster, requests: int) -> bool:
    return len(poster.statuses) >= requests


async def _spooling(client: httpx.AsyncClient) -> bool:
    return bool((await client.get("/readyz")).json().get("spooling"))


def _start_tansu(port: int, log: Path) -> subprocess.Popen[bytes]:
    """A broker of its own on `port` (memory only), logging to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(tansu_command(port), stdout=out, stderr=subprocess.STDOUT)


async def _drained(client: httpx.AsyncClient) -> bool:
    response = await client.get("/readyz")
    return response.status_code == 200 and "spooling" not in response.json()


def _metric(text: str, name: str) -> float:
    [line] = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


def _body(response: httpx.Response) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = json.loads(response.request.content)
    return body


async def test_ingest_started_while_the_broker_is_down_spools_then_drains(
    settings: IngestSettings, tmp_path: Path
) -> None:
    """Ingest (re)started during a broker outage: it does not fail its start; /readyz
    answers 200 showing the broker not reached and the spool; posts are accepted into
    the spool; once a broker listens on the address, ingest creates its topics, drains
    the spool and publishes new records straight through."""
    port = free_port()
    down = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{port}"})
    env = ingest_env(down, "spool_dir", "spool_publish_timeout_s")
    url = f"http://127.0.0.1:{settings.ingest_port}"
    log = tmp_path / "ingest.log"
    proc = spawn_ingest(env, log)
    broker: subprocess.Popen[bytes] | None = None
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await wait_ready(client, proc, log)  # ready on its spool alone
            poster = Poster(client, batch=25)
            for _ in range(4):
                await poster.post_once()
            ready = (await client.get("/readyz")).json()
            assert ready["broker"]["reached"] is False, ready
            assert ready["spooling"]["records"] == 100, ready
            assert set(poster.statuses) == {202}

            broker = await asyncio.to_thread(_start_tansu, port, tmp_path / "tansu.log")
            await eventually(lambda: _drained(client), timeout_s=90)
            assert "broker" not in (await client.get("/readyz")).json()
            await poster.post_once()  # straight through now
        records = await read_valid(down, set(poster.accepted))
        check_delivery(records, poster.accepted)
        assert '"event": "broker_reached"' in tail(log, 10**7)
    finally:
        stop_service(proc, timeout_s=30)
        if broker is not None:
            stop_service(broker, timeout_s=20)
