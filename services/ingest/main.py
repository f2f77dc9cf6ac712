"""Ingest service: HTTP and signals.raw in; signals.valid, outcomes, signals.dlq out.

POST /v1/signals, /v1/outcomes          -> IngestHandler.on_signals / on_outcomes
GET /v1/admin/dlq, POST /v1/admin/dlq/replay (admin key)
                                        -> signals.dlq read page by page, replayed to signals.raw
signals.raw (raw bytes, group "ingest") -> IngestHandler.on_raw_records
polled sources (`poll` in definitions)  -> IngestHandler.on_polled, on_stale (sources/)
    -> signals.valid, outcomes, signals.dlq
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import datetime

import uvicorn
from fastapi import FastAPI

from libs.common.clients.kafka import KafkaRuntime, Publisher, Subscription
from libs.common.clients.kafka.pages import TopicPages
from libs.common.definitions import Definitions, load_definitions
from libs.common.lifecycle import OpsServer
from libs.common.observability import configure_logging, configure_tracing
from libs.common.observability.metrics import INFO
from libs.common.resilience import Policy
from libs.common.schemas import utcnow
from libs.common.security import KeyRing
from services.ingest.adapters.http import always_ready, create_app
from services.ingest.admin import DeadLetterReplayer, ReadPage, ReplayLedger, admin_router
from services.ingest.core.dedup import DedupWindow, NoDedupWindow
from services.ingest.dedup import RedisDedupWindow, RedisReplayLedger, redis_client
from services.ingest.handlers import IngestHandler
from services.ingest.observation import SignalObserver
from services.ingest.settings import IngestSettings
from services.ingest.sources import PolledSources, RedisSnapshotStore, SnapshotStore
from services.ingest.spooling import BrokerStart, spooled_health, spooling_publisher
from services.ingest.workers import run_workers, shared_port_socket


def build_app(
    settings: IngestSettings,
    *,
    publisher: Publisher | None = None,
    definitions: Definitions | None = None,
    clock: Callable[[], datetime] = utcnow,
    read_page: ReadPage | None = None,
    dedup: DedupWindow | None = None,
    ledger: ReplayLedger | None = None,
    snapshots: SnapshotStore | None = None,
) -> FastAPI:
    """The ingest app. Given a `publisher` (tests) it owns no Kafka connection; without
    one, its lifespan creates the topics, starts the producer and consumes signals.raw.
    `read_page`, `dedup` and `ledger` replace signals.dlq and Redis (tests); without
    them ingest reads the broker and Redis (SIGNALOPS_REDIS_URL).
    """
    definitions = definitions or load_definitions(settings.definitions)
    kafka: KafkaRuntime | None = None
    if publisher is None:
        publisher = kafka = KafkaRuntime(settings, client_id="ingest")
    # HTTP input waits in a disk spool while the broker is down (the owned broker only).
    spooler = spooling_publisher(kafka, settings) if kafka is not None else None
    redis = redis_client(settings.dedup_redis_url or settings.redis_url, settings.dedup_timeout_s)
    if dedup is None and settings.dedup_enabled:
        # One attempt per batch, then fail open: Redis never turns a request into a 5xx.
        dedup_policy = Policy("redis-dedup", timeout_s=settings.dedup_timeout_s, attempts=1)
        dedup = RedisDedupWindow(redis, dedup_policy, window_s=settings.dedup_window_s)
    ledger = ledger or RedisReplayLedger(
        redis,
        Policy("redis-replay-ledger", timeout_s=2.0),
        topic=settings.topics.dlq,
        ttl_s=settings.dlq_replayed_ttl_s,
    )
    # Writes settings.topics.valid, .outcomes, .dlq and .schema_events (see handlers.py).
    handler = IngestHandler(
        definitions,
        publisher,
        settings.topics,
        max_record_bytes=settings.max_record_bytes,
        dead_letter_max_bytes=settings.dead_letter_max_bytes,
        clock=clock,
        dedup=dedup or NoDedupWindow(),
        spool=spooler,
        observer=SignalObserver(definitions, event_interval_s=settings.schema_event_interval_s),
        ingest_version=settings.ingest_version,
    )

    # Polled sources (`poll` in the definitions): a task each, fetching through the
    # handler; their snapshots in Redis (`snapshots` replaces it in tests).
    polled = PolledSources(
        definitions,
        handler,
        snapshots or RedisSnapshotStore(redis),
        Policy("redis-snapshots", timeout_s=settings.call_timeout_s),
        max_body_bytes=settings.max_body_bytes,
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
                max_records=settings.raw_max_records,
            )
        )

    # With its own broker ingest serves from the start: the spool opens first and Kafka
    # is reached in the background, so a start during a broker outage spools (issue 9).
    broker_start = BrokerStart(kafka) if kafka is not None else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        spooling: AbstractAsyncContextManager[None] = (
            spooler.running() if spooler else nullcontext()
        )
        connecting: asyncio.Task[None] | None = None
        try:
            async with spooling:  # recovers the spool; its drainer stops before Kafka
                if broker_start is not None:
                    connecting = asyncio.create_task(broker_start.run(), name="ingest broker")
                if settings.polls_sources:
                    await polled.start()  # after the spool opened: polled records need it
                if ops is not None:
                    await ops.start()
                try:
                    yield
                finally:
                    if ops is not None:
                        await ops.stop()
                    await polled.stop()
        finally:
            if connecting is not None and not connecting.done():
                connecting.cancel()
            if connecting is not None:
                await asyncio.gather(connecting, return_exceptions=True)
            if kafka is not None:
                await kafka.stop()
            await redis.aclose()

    ready = kafka.ready if kafka is not None else always_ready
    alive = kafka.liveness if kafka is not None else list
    if kafka is not None and spooler is not None and broker_start is not None:
        ready, alive = spooled_health(kafka, spooler, broker_start)  # ready while it has room
    # A worker's own /metrics: ingest_port answers for whichever worker took the connection.
    ops = (
        OpsServer(
            "ingest",
            settings.ingest_host,
            settings.ingest_worker_ports_from + settings.ingest_worker_index,
            alive,
            ready,
        )
        if settings.ingest_worker_index is not None
        else None
    )
    app = create_app(
        handler,
        settings,
        definitions,
        readiness=ready,
        liveness=alive,
        lifespan=lifespan,
        # One polled source down never makes it unready; the spool shows while it fills.
        ready_details=lambda: {
            **polled.ready_details(),
            **(spooler.status() if spooler else {}),
            **(broker_start.status() if broker_start else {}),
        },
    )
    # Admin (admin scope): reads signals.dlq, writes signals.raw and, via the handler,
    # outcomes and signals.dlq.
    pages = read_page or TopicPages(settings.kafka_bootstrap, settings.topics.dlq).page
    replayer = DeadLetterReplayer(handler, publisher, ledger, settings)
    app.include_router(
        admin_router(KeyRing.from_settings(settings), pages, replayer, settings.dlq_page_size)
    )
    return app


def main() -> None:
    """Serve until SIGTERM/SIGINT; uvicorn then runs the lifespan shutdown. With
    SIGNALOPS_INGEST_WORKERS=N this process supervises N workers instead (workers.py)."""
    settings = IngestSettings()
    configure_logging("ingest", settings.log_level)
    if settings.ingest_workers > 1:
        load_definitions(settings.definitions)  # an invalid file fails in the parent, once
        raise SystemExit(run_workers(settings))
    configure_tracing("ingest", settings.otlp_endpoint)
    INFO.labels("ingest").set(1)
    app = build_app(settings)  # an invalid definitions file fails here, before listening
    # What start-up built (modules, the app, the definitions) lives as long as the
    # process: moved out of the collector's sight, so full collections stop walking it,
    # and young collections run per 50,000 allocations instead of 700. Each batch makes
    # a few dicts per record; collections cost ingest about 10% (issue 9). Here, not in
    # build_app: it is process-wide, and tests build apps in their own process.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    config = uvicorn.Config(
        app,
        host=settings.ingest_host,
        port=settings.ingest_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    if settings.ingest_worker_index is None:
        server.run()
    else:  # a worker: ingest_port shared with the other workers
        server.run(sockets=[shared_port_socket(settings.ingest_host, settings.ingest_port)])


if __name__ == "__main__":
    main()
