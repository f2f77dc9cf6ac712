"""The ingest service on the session broker and Redis, served in-process for a test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import uvicorn

from libs.common.clients.kafka import ensure_topics
from libs.common.net import free_port
from libs.common.settings import Settings
from services.ingest.main import build_app
from services.ingest.settings import IngestSettings

ADMIN_TOKEN = "ingest-dlq-admin-token-0123456789"


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
async def serving(settings: IngestSettings) -> AsyncIterator[str]:
    """build_app(settings) under uvicorn on its port; yields the base URL."""
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(settings),
            host="127.0.0.1",
            port=settings.ingest_port,
            log_config=None,
            access_log=False,
        )
    )
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():  # startup failed: surface its error
            task.result()
            raise AssertionError("uvicorn stopped before it started")
        return server.started

    try:
        await eventually(started, timeout_s=60)
        yield f"http://127.0.0.1:{settings.ingest_port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
