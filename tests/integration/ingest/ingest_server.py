"""The ingest service on the session broker and Redis, served in-process or as its own
process for a test, and readers of the topics it writes."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from starlette.types import ASGIApp

from libs.common.clients.kafka import ensure_topics
from libs.common.clients.kafka.reader import read_to_end
from libs.common.definitions import Definitions
from libs.common.net import free_port
from libs.common.settings import Settings
from libs.common.testing import spawn_service
from services.ingest.main import build_app
from services.ingest.settings import IngestSettings

ADMIN_TOKEN = "ingest-dlq-admin-token-0123456789"
# The `make_ingest_settings` fixture (conftest.py): `ingest_settings` with keyword overrides.
MakeIngestSettings = Callable[..., Coroutine[Any, Any, IngestSettings]]


async def ingest_settings(
    make_settings: Callable[..., Settings],
    kafka_bootstrap: str,
    redis_url: str,
    unique: str,
    **overrides: object,
) -> IngestSettings:
    """Settings with this test's topics, group, port and the session Redis; topics created."""
    base = make_settings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url)
    settings = IngestSettings(
        **{
            **base.model_dump(),
            "ingest_port": free_port(),
            "consumer_group": f"ingest-{unique}",
            "admin_token": ADMIN_TOKEN,
            **overrides,
        }
    )
    await ensure_topics(kafka_bootstrap, settings.topics.all(), settings.kafka_partitions)
    return settings


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float) -> None:
    """Poll `check` until it holds; TimeoutError after `timeout_s` (never a bare sleep)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.1)


@asynccontextmanager
async def served(app: ASGIApp, port: int, *, stop_timeout_s: float = 60) -> AsyncIterator[str]:
    """`app` under uvicorn in this loop on `port`; yields the base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():  # startup failed: surface its error
            task.result()
            raise AssertionError("uvicorn stopped before it started")
        return server.started

    try:
        await eventually(started, timeout_s=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, stop_timeout_s)


@asynccontextmanager
async def serving(
    settings: IngestSettings, *, definitions: Definitions | None = None
) -> AsyncIterator[str]:
    """build_app(settings) under uvicorn on its port; yields the base URL."""
    # Generous stop bound: shutdown drains a spool that may still hold records.
    app = build_app(settings, definitions=definitions)
    async with served(app, settings.ingest_port, stop_timeout_s=60) as url:
        yield url


@asynccontextmanager
async def serving_client(
    settings: IngestSettings, *, timeout_s: float = 30
) -> AsyncIterator[httpx.AsyncClient]:
    """`serving(settings)`, yielding a client of it."""
    async with serving(settings) as url, httpx.AsyncClient(base_url=url, timeout=timeout_s) as c:
        yield c


@asynccontextmanager
async def topic_reader(settings: Settings, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer of `topic` from the beginning, in no group."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def consume(
    settings: Settings, topic: str, *, count: int, timeout_s: float = 60
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read `topic` from the beginning until `count` records arrived (bounded wait)."""
    got: list[ConsumerRecord[bytes, bytes]] = []
    async with topic_reader(settings, topic) as consumer, asyncio.timeout(timeout_s):
        while len(got) < count:
            batches = await consumer.getmany(timeout_ms=500)
            got.extend(r for part in batches.values() for r in part)
    return got


async def read_values(settings: Settings, topic: str) -> list[bytes]:
    """Every record value on `topic`, read to its end."""
    return [d.value for d in await read_to_end(settings.kafka_bootstrap, topic, within_s=60)]


def ingest_env(settings: IngestSettings, *fields: str) -> dict[str, str]:
    """The environment that gives `python -m services.ingest.main` these settings: the
    broker, Redis, port, definitions, data dir, group, topics, and each named field."""
    env = {
        **os.environ,
        "SIGNALOPS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SIGNALOPS_REDIS_URL": settings.redis_url,
        "SIGNALOPS_INGEST_PORT": str(settings.ingest_port),
        "SIGNALOPS_DEFINITIONS": str(settings.definitions),
        "SIGNALOPS_DATA_DIR": str(settings.data_dir),
        "SIGNALOPS_CONSUMER_GROUP": settings.consumer_group,
        "SIGNALOPS_KAFKA_PARTITIONS": str(settings.kafka_partitions),
    }
    env.update({f"SIGNALOPS_{f.upper()}": str(getattr(settings, f)) for f in fields})
    env.update({f"SIGNALOPS_TOPICS__{k.upper()}": v for k, v in settings.topics})
    return env


def spawn_ingest(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start the service as `signalops up` does, its output going to `log`."""
    return spawn_service("services.ingest.main", env, log)


def tail(log: Path, chars: int = 3000) -> str:
    """The end of a service's log, for a failure message."""
    return log.read_text()[-chars:]


async def wait_ready(
    client: httpx.AsyncClient,
    proc: subprocess.Popen[bytes],
    log: Path | None = None,
    timeout_s: float = 90,
) -> None:
    """Bounded wait until the process answers /readyz 200; fails at once if it exited
    (with the end of its `log`, when given)."""

    async def ready() -> bool:
        assert proc.poll() is None, tail(log) if log else "ingest exited"
        try:
            return (await client.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(ready, timeout_s=timeout_s)
