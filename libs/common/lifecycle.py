"""Process lifecycle shared by the Kafka services: signals and the ops HTTP server.

Features and retrain have no HTTP API of their own; their ops server answers
`/metrics`, `/healthz` (503 naming each dead consume loop) and `/readyz`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from libs.common.observability.metrics import INFO

Liveness = Callable[[], list[str]]
Readiness = Callable[[], Awaitable[str | None]]


def stop_on_signals(stop: Callable[[], None]) -> None:
    """Call `stop` on SIGTERM/SIGINT so loops finish their batch and shut down cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


def ops_app(liveness: Liveness, readiness: Readiness | None = None) -> Starlette:
    """`/metrics`, `/healthz` and `/readyz` of a service without its own HTTP API."""

    async def healthz(_: Request) -> Response:
        dead = liveness()
        if dead:
            return JSONResponse({"status": "dead", "problems": dead}, status_code=503)
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> Response:
        dead = liveness()
        reason = "; ".join(dead) if dead else (await readiness() if readiness else None)
        if reason:
            return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(_: Request) -> Response:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )


class OpsServer:
    """The ops app on host:port, in the service's own event loop."""

    def __init__(
        self,
        service: str,
        host: str,
        port: int,
        liveness: Liveness,
        readiness: Readiness | None = None,
    ) -> None:
        config = uvicorn.Config(
            ops_app(liveness, readiness),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        # The service handles signals itself (stop_on_signals); uvicorn must not take them.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._service = service
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name=f"{self._service} ops")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises the bind error
                raise RuntimeError(f"{self._service} ops server exited at start")
            await asyncio.sleep(0.05)
        INFO.labels(self._service).set(1)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
