"""SIGNALOPS_INGEST_WORKERS=2 on the real broker and Redis: two ingest processes behind
one port (services/ingest/workers.py). Records posted over several connections and
produced to signals.raw all reach signals.valid once; both workers serve (their own
/metrics count what they accepted); a killed worker is restarted by the parent with
its index and the port keeps answering; SIGTERM stops every worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from aiokafka import AIOKafkaProducer

from libs.common.net import free_port
from libs.common.schemas import Signal, utcnow
from libs.common.testing import stop_service
from services.ingest.settings import IngestSettings
from tests.integration.ingest.ingest_server import (
    MakeIngestSettings,
    consume,
    eventually,
    ingest_env,
    spawn_ingest,
    tail,
    wait_ready,
)

pytestmark = pytest.mark.integration
CLIENTS = 6  # connections: SO_REUSEPORT spreads them over the workers
BATCHES = 8  # per client
BATCH = 100
RAW = 400


def _two_free_ports() -> int:
    """A port p with p + 1 free too (worker i's ops port is ports_from + i)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def _record(seq: int, tag: str) -> dict[str, Any]:
    at = utcnow() - timedelta(minutes=10) + timedelta(milliseconds=seq)
    return {
        "source": "sensors",
        "entity_id": f"device-{seq % 17}",
        "event_time": at.isoformat().replace("+00:00", "Z"),
        "event_id": f"{tag}-{seq}",
        "fields": {"temperature": 20.5, "vibration": 1.0, "pressure": 1.0, "status": "ok"},
    }


def _accepted_by(metrics: str) -> float:
    """signalops_messages_total of accepted HTTP records in one worker's /metrics."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("signalops_messages_total{") and 'outcome="accepted"' in line:
            if 'topic="http"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


async def _post_all(url: str, tag: str, client_no: int) -> list[str]:
    """One client (its own connection) posting BATCHES batches; the accepted ids."""
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for b in range(BATCHES):
            first = (client_no * BATCHES + b) * BATCH
            body = [_record(n, tag) for n in range(first, first + BATCH)]
            response = await client.post("/v1/signals", json=body)
            assert response.status_code == 202, response.text
            ids += [a["event_id"] for a in response.json()["accepted"]]
    return ids


async def test_two_workers_share_the_port_and_raw_topic_and_survive_a_kill(
    make_ingest_settings: MakeIngestSettings, tmp_path: Path
) -> None:
    settings: IngestSettings = await make_ingest_settings(
        ingest_workers=2, ingest_worker_ports_from=_two_free_ports()
    )
    env = ingest_env(settings, "ingest_workers", "ingest_worker_ports_from")
    log = tmp_path / "ingest.log"
    proc = spawn_ingest(env, log)
    url = f"http://127.0.0.1:{settings.ingest_port}"
    ops = [f"http://127.0.0.1:{settings.ingest_worker_ports_from + i}" for i in (0, 1)]
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await wait_ready(client, proc, log)
            for base in ops:  # both workers up, each with its own ops port
                async with httpx.AsyncClient(base_url=base, timeout=10) as worker:
                    await wait_ready(worker, proc, log)
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2, tail(log)

        posted = await asyncio.gather(*(_post_all(url, "http", c) for c in range(CLIENTS)))
        http_ids = [i for ids in posted for i in ids]
        assert len(http_ids) == CLIENTS * BATCHES * BATCH

        # Each worker's own /metrics counts what it accepted; together, every record.
        async with httpx.AsyncClient(timeout=10) as c:
            per_worker = [_accepted_by((await c.get(f"{b}/metrics")).text) for b in ops]
        assert sum(per_worker) == len(http_ids), per_worker

        # Worker 1 killed: the parent starts it again, the port keeps answering.
        victim = next(p for p in workers if p.environ().get("SIGNALOPS_INGEST_WORKER_INDEX") == "1")
        os.kill(victim.pid, signal.SIGKILL)

        async def restarted() -> bool:
            pids = {p.pid for p in psutil.Process(proc.pid).children()}
            if len(pids) != 2 or victim.pid in pids:
                return False
            try:
                async with httpx.AsyncClient(timeout=2) as c:
                    return (await c.get(f"{ops[1]}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(restarted, timeout_s=90)

        # signals.raw: the two workers split its partitions in one group.
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            for n in range(RAW):
                r = _record(n, "raw")
                await producer.send(
                    settings.topics.raw, json.dumps(r).encode(), key=r["entity_id"].encode()
                )
            await producer.flush()
        finally:
            await producer.stop()
        more = await _post_all(url, "after", 0)

        wanted = len(http_ids) + RAW + len(more)
        got = await consume(settings, settings.topics.valid, count=wanted, timeout_s=120)
        ids = Counter(Signal.from_bytes(r.value).event_id for r in got)
        assert set(ids) == {*http_ids, *more, *(f"raw-{n}" for n in range(RAW))}
        assert max(ids.values()) == 1, "a record published twice"
    finally:
        stop_service(proc, timeout_s=40)
    assert proc.returncode == 0, tail(log)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in workers)
