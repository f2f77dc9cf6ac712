"""Ingest service: HTTP and signals.raw in; signals.valid, outcomes, signals.dlq out.

POST /v1/signals, /v1/outcomes          -> IngestHandler.on_signals / on_outcomes
POST /v1/admin/dlq/replay (admin key)   -> signals.dlq read, replayed to signals.raw
signals.raw (raw bytes, group "ingest") -> IngestHandler.on_raw_records
    -> signals.valid, outcomes, signals.dlq
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

import uvicorn
from fastapi import FastAPI

from libs.common.clients.kafka import KafkaRuntime, Publisher, Subscription
from libs.common.definitions import Definitions, load_definitions
from libs.common.observability import configure_logging, configure_tracing
from libs.common.observability.metrics import INFO
from libs.common.schemas import DeadLetter, utcnow
from libs.common.security import KeyRing
from services.ingest.adapters.http import always_ready, create_app
from services.ingest.admin import (
    ReadLetters,
    ReplayReport,
    ReplayRequest,
    admin_router,
    dead_letter_reader,
    replay_dead_letters,
)
from services.ingest.handlers import IngestHandler
from services.ingest.settings import IngestSettings


def build_app(
    settings: IngestSettings,
    *,
    publisher: Publisher | None = None,
    definitions: Definitions | None = None,
    clock: Callable[[], datetime] = utcnow,
    read_letters: ReadLetters | None = None,
) -> FastAPI:
    """The ingest app. Given a `publisher` (tests) it owns no Kafka connection; without
    one, its lifespan creates the topics, starts the producer and consumes signals.raw.
    `read_letters` replaces reading signals.dlq from the broker (tests).
    """
    definitions = definitions or load_definitions(settings.definitions)
    kafka: KafkaRuntime | None = None
    if publisher is None:
        publisher = kafka = KafkaRuntime(settings, client_id="ingest")
    # Writes settings.topics.valid, .outcomes and .dlq (see handlers.py).
    handler = IngestHandler(
        definitions,
        publisher,
        settings.topics,
        max_record_bytes=settings.max_record_bytes,
        dead_letter_max_bytes=settings.dead_letter_max_bytes,
        clock=clock,
    )

    if kafka is not None:
        kafka.subscribe(
            Subscription(
                name=f"ingest {settings.topics.raw}",
                topics={settings.topics.raw: None},  # raw bytes: validation is ingest's job
                handler=handler.on_raw_records,
                group=settings.consumer_group,
                max_attempts=settings.consumer_max_attempts,
            )
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if kafka is not None:
            await kafka.start()
        try:
            yield
        finally:
            if kafka is not None:
                await kafka.stop()

    ready = kafka.ready if kafka is not None else always_ready
    alive = kafka.liveness if kafka is not None else list
    app = create_app(
        handler, settings, definitions, readiness=ready, liveness=alive, lifespan=lifespan
    )
    # Admin (admin scope): reads signals.dlq, writes signals.raw and, via the handler,
    # outcomes and signals.dlq.
    sender = publisher  # a local the closure keeps narrowed (never None here)

    async def replay(letters: list[DeadLetter], request: ReplayRequest) -> ReplayReport:
        return await replay_dead_letters(
            letters, request, handler=handler, publisher=sender, settings=settings
        )

    app.include_router(
        admin_router(
            KeyRing.from_settings(settings), read_letters or dead_letter_reader(settings), replay
        )
    )
    return app


def main() -> None:
    """Serve until SIGTERM/SIGINT; uvicorn then runs the lifespan shutdown."""
    settings = IngestSettings()
    configure_logging("ingest", settings.log_level)
    configure_tracing("ingest", settings.otlp_endpoint)
    INFO.labels("ingest").set(1)
    app = build_app(settings)  # an invalid definitions file fails here, before listening
    uvicorn.run(
        app,
        host=settings.ingest_host,
        port=settings.ingest_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
