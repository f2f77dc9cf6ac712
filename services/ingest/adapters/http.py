"""The ingest HTTP API (DESIGN.md "HTTP, ingest service"), on FastAPI.

Bodies are read as bytes and split here so every record keeps its original bytes;
the answer comes only after the broker acknowledged what was published.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from libs.common.definitions import Definitions
from libs.common.errors import DependencyUnavailable
from libs.common.http import ConcurrencyLimit
from libs.common.observability import get_logger, tracer
from libs.common.schemas import Message, Outcome, Signal
from services.ingest.core.batch import RecordItem, split_body
from services.ingest.core.verdicts import BatchResult
from services.ingest.errors import BatchTooLarge, BodyTooSlow, InvalidBody
from services.ingest.handlers import IngestHandler
from services.ingest.settings import IngestSettings
from services.ingest.spool import SpoolFull

# None when ready, else the reason it is not.
Readiness = Callable[[], Awaitable[str | None]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

log = get_logger(__name__)


async def always_ready() -> str | None:
    return None


def create_app(
    handler: IngestHandler,
    settings: IngestSettings,
    definitions: Definitions,
    *,
    readiness: Readiness = always_ready,
    liveness: Callable[[], list[str]] = list,
    lifespan: Lifespan | None = None,
    ready_details: Callable[[], dict[str, object]] = dict,
) -> FastAPI:
    """The FastAPI app; `lifespan` starts and stops what the app owns (Kafka);
    `ready_details` adds to the /readyz body (the outage spool while it holds records).
    """
    app = FastAPI(title="signalops ingest", version="1", lifespan=lifespan)
    # Before any body is read: a flood of large bodies is answered 503, not buffered.
    app.add_middleware(
        ConcurrencyLimit, service="ingest", max_requests=settings.max_concurrent_requests
    )

    @app.post("/v1/signals", status_code=202, openapi_extra=_body_doc(Signal, "signals"))
    async def post_signals(request: Request) -> Response:
        """One signal, an array of them, or {"signals": [...]}; 202, 207, 422, 400 or 413."""
        return await _ingest(request, "signals", handler.on_signals, handler, settings)

    @app.post("/v1/outcomes", status_code=202, openapi_extra=_body_doc(Outcome, "outcomes"))
    async def post_outcomes(request: Request) -> Response:
        """One outcome, an array of them, or {"outcomes": [...]}; statuses as for signals."""
        return await _ingest(request, "outcomes", handler.on_outcomes, handler, settings)

    @app.get("/v1/sources")
    async def get_sources() -> dict[str, Any]:
        """The registered sources with their versions and field schemas, and what ingest
        observed of each since it started: schema drift (counts by kind and field, first
        and last seen) and data quality."""
        observer = handler.observer
        return {
            "sources": [
                {
                    **s.model_dump(mode="json"),
                    **({"observed": observer.report(s.name)} if observer is not None else {}),
                }
                for s in definitions.sources
            ]
        }

    @app.get("/healthz")
    async def healthz() -> Response:
        dead = liveness()
        if dead:
            return JSONResponse({"status": "dead", "problems": dead}, status_code=503)
        return JSONResponse({"status": "alive"})

    @app.get("/readyz")
    async def readyz() -> Response:
        reason = await readiness()
        if reason is None:
            return JSONResponse({"status": "ready", **ready_details()})
        return JSONResponse(
            {"status": "not_ready", "reason": reason, **ready_details()}, status_code=503
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _body_doc(model: type[Message], wrapper: str) -> dict[str, Any]:
    """OpenAPI request body of an ingest route: one record, an array, or the wrapper."""
    one = model.model_json_schema()
    many = {"type": "array", "items": one}
    wrapped = {"type": "object", "properties": {wrapper: many}, "required": [wrapper]}
    schema = {"anyOf": [one, many, wrapped]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _ingest(
    request: Request,
    wrapper: str,
    on_items: Callable[[Sequence[RecordItem]], Awaitable[BatchResult]],
    handler: IngestHandler,
    settings: IngestSettings,
) -> Response:
    route = f"POST /v1/{wrapper}"
    with tracer("ingest").start_as_current_span(route, kind=trace.SpanKind.SERVER) as span:
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                body = await _read_body(request, settings.max_body_bytes)
            items = split_body(body, wrapper=wrapper, max_records=settings.max_batch)
        except TimeoutError:
            # A slow-drip client (slowloris) would hold one of max_concurrent_requests
            # for as long as it liked; it is cut off and told why.
            exc = BodyTooSlow(
                f"the body did not arrive within {settings.body_timeout_s:g} s; send it at "
                "once, or split the batch"
            )
            span.set_attribute("ingest.error", exc.reason)
            return JSONResponse(
                {"error": exc.reason, "detail": str(exc)},
                status_code=408,
                headers={"Connection": "close"},
            )
        except BatchTooLarge as exc:
            span.set_attribute("ingest.error", exc.reason)
            return JSONResponse({"error": exc.reason, "detail": str(exc)}, status_code=413)
        except InvalidBody as exc:
            source = "http" if wrapper == "signals" else wrapper
            result = await _answer(handler.on_invalid_body(body, exc, source=source))
            return result if isinstance(result, Response) else _json(result, 400)
        span.set_attribute("ingest.records", len(items))
        result = await _answer(on_items(items))
        if isinstance(result, Response):
            return result
        span.set_attribute("ingest.accepted", len(result.accepted))
        span.set_attribute("ingest.rejected", len(result.rejected))
        if not result.rejected:
            return _json(result, 202)
        # A duplicate was taken before: with a rejection beside it the batch is mixed.
        return _json(result, 422 if not (result.accepted or result.duplicates) else 207)


async def _answer(pending: Awaitable[BatchResult]) -> BatchResult | Response:
    """The handler's result, or 503 when the broker did not acknowledge in time.

    Some records may have been published before the failure; the client retries the
    whole request and downstream deduplicates by event id (at-least-once).
    """
    try:
        return await pending
    except SpoolFull as exc:
        # The broker is down and the spool holds its limit: the client keeps its records.
        return JSONResponse(
            {"error": "spool_full", "detail": str(exc)},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    except (KafkaError, TimeoutError, OSError, DependencyUnavailable) as exc:
        log.exception("publish_failed")
        return JSONResponse(
            {
                "error": "broker_unavailable",
                "detail": f"the broker did not acknowledge ({type(exc).__name__}); retry later",
            },
            status_code=503,
            headers={"Retry-After": "1"},
        )


def _json(result: BatchResult, status: int) -> Response:
    # orjson: an answer names every record of a batch of up to max_batch.
    return Response(orjson.dumps(result.to_json()), status, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BatchTooLarge(f"body is {declared} bytes; the limit is {limit}, split the batch")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BatchTooLarge(f"body exceeds {limit} bytes; split the batch")
        chunks.append(chunk)
    return b"".join(chunks)
