"""One task per polled source: fetch over HTTP behind the source's own breaker, validate
and publish through the handler, cache the accepted snapshot in Redis; while the source
is down, re-emit that snapshot flagged stale until it is older than `max_stale_s`.

A failing source never makes ingest unready: its state shows in `GET /readyz`'s body
and in `signalops status`, its breaker in `signalops_breaker_state{dependency=
"source:<name>"}`, an expired fallback in `signalops_ingest_polled_source_expired`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx

from libs.common.definitions import Definitions, PollSpec, SourceDefinition
from libs.common.errors import DependencyUnavailable
from libs.common.observability import get_logger
from libs.common.resilience import Policy
from libs.common.schemas import utcnow
from services.ingest.core._describe import iso
from services.ingest.core.polled import InvalidPollResponse, map_response
from services.ingest.errors import InvalidBody
from services.ingest.handlers import IngestHandler
from services.ingest.sources.auth import auth_headers
from services.ingest.sources.metrics import POLLS, SNAPSHOT_AGE, SNAPSHOT_EXPIRED
from services.ingest.sources.snapshots import Snapshot, SnapshotStore

log = get_logger(__name__)

# starting: no poll finished yet; fresh: the last poll succeeded; stale: the source is
# down and its cached snapshot was re-emitted; expired: down with no usable snapshot.
Serving = Literal["starting", "fresh", "stale", "expired"]


class ResponseTooLarge(InvalidPollResponse):
    """A polled response over the size limit; its head is dead-lettered."""

    def __init__(self, message: str, head: bytes) -> None:
        super().__init__(message)
        self.head = head


@dataclass
class PolledSource:
    """Polls one source until stopped.

    Args:
        source: the source definition (its `poll` is set).
        handler: validates and publishes, as for pushed records.
        snapshots: where the last good snapshot is kept.
        client: the shared HTTP client.
        headers: the auth header (a secret: never logged).
        store: the Redis policy (timeout, retries, breaker) of snapshot reads and writes.
        max_body_bytes: largest response read; a larger one is refused.
        clock: the current time.
    """

    source: SourceDefinition
    handler: IngestHandler
    snapshots: SnapshotStore
    client: httpx.AsyncClient
    headers: dict[str, str]
    store: Policy
    max_body_bytes: int = 8 * 1024 * 1024
    clock: Callable[[], datetime] = utcnow
    serving: Serving = "starting"
    last_ok_at: datetime | None = None
    snapshot_age_s: float | None = None
    policy: Policy = field(init=False)

    def __post_init__(self) -> None:
        poll = self.poll
        # Its own breaker: one source down never blocks another, nor the Redis or
        # Kafka breakers of the process.
        self.policy = Policy(
            f"source:{self.source.name}",
            timeout_s=poll.timeout_s,
            attempts=poll.attempts,
            fail_max=poll.fail_max,
            reset_s=poll.reset_s,
            max_wait_s=min(2.0, poll.interval_s),
        )
        SNAPSHOT_AGE.labels(self.name).set(0)
        SNAPSHOT_EXPIRED.labels(self.name).set(0)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def poll(self) -> PollSpec:
        assert self.source.poll is not None  # only polled sources get a poller
        return self.source.poll

    def describe(self) -> dict[str, Any]:
        """The source's state as `GET /readyz` and `signalops status` show it."""
        return {
            "breaker": self.policy.state,
            "serving": self.serving,
            "last_ok_at": None if self.last_ok_at is None else iso(self.last_ok_at),
            "snapshot_age_s": self.snapshot_age_s,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `interval_s` until `stop` is set."""
        while not stop.is_set():
            try:
                await self.poll_once()
            except Exception:  # e.g. the broker is down: never ends the source's task
                log.exception("poll_not_published", source=self.name)
            try:
                await asyncio.wait_for(stop.wait(), self.poll.interval_s)
            except TimeoutError:
                pass

    async def poll_once(self) -> Serving:
        """One poll: fresh records on success, else the cached fallback."""
        try:
            body = await self.policy.call(self._fetch)
        except DependencyUnavailable as exc:
            POLLS.labels(self.name, "failed").inc()
            log.warning(
                "poll_failed", source=self.name, breaker=self.policy.state, error=exc.detail
            )
            return await self._fall_back()
        except ResponseTooLarge as exc:
            return await self._refuse(exc.head, exc)
        polled_at = self.clock()
        try:
            items = map_response(body, self.source, polled_at)
        except InvalidBody as exc:
            return await self._refuse(body, exc)
        accepted = await self.handler.on_polled(self.name, items)
        try:
            await self.store.call(
                self.snapshots.save, self.name, self.source.version, Snapshot(polled_at, accepted)
            )
        except DependencyUnavailable as exc:
            # The records are published; only the fallback is older than it could be.
            log.error("snapshot_not_saved", source=self.name, error=exc.detail)
        POLLS.labels(self.name, "ok").inc()
        SNAPSHOT_AGE.labels(self.name).set(0)
        SNAPSHOT_EXPIRED.labels(self.name).set(0)
        self.last_ok_at, self.snapshot_age_s = polled_at, None
        self.serving = "fresh"
        return self.serving

    async def _fetch(self) -> bytes:
        try:
            async with self.client.stream(
                "GET", self.poll.url, headers=self.headers, timeout=self.poll.timeout_s
            ) as response:
                if response.status_code >= 300:
                    # The source is not serving (4xx included: a revoked token is an
                    # outage of this source until an operator acts).
                    raise DependencyUnavailable(
                        self.policy.name, f"answered HTTP {response.status_code}"
                    )
                return await _read_limited(response, self.max_body_bytes)
        except httpx.TransportError as exc:  # connect, read and httpx's own timeouts
            raise DependencyUnavailable(self.policy.name, type(exc).__name__) from exc

    async def _refuse(self, body: bytes, error: InvalidBody) -> Serving:
        """The source answered with no records to read: dead-letter the body, fall back."""
        POLLS.labels(self.name, "invalid").inc()
        log.warning("poll_response_invalid", source=self.name, reason=error.reason)
        await self.handler.on_invalid_body(body, error, source=self.name)
        return await self._fall_back()

    async def _fall_back(self) -> Serving:
        """Re-emit the cached snapshot flagged stale, or nothing once it is too old."""
        now = self.clock()
        try:
            snapshot = await self.store.call(self.snapshots.load, self.name, self.source.version)
        except DependencyUnavailable as exc:
            log.error("snapshot_unreadable", source=self.name, error=exc.detail)
            snapshot = None
        age = None if snapshot is None else snapshot.age_s(now)
        self.snapshot_age_s = age
        if snapshot is None or age is None or age > self.poll.max_stale_s:
            # Nothing is invented past the limit: no record of this source flows.
            SNAPSHOT_EXPIRED.labels(self.name).set(1)
            SNAPSHOT_AGE.labels(self.name).set(age or 0)
            if self.serving != "expired":
                log.error(
                    "polled_source_expired",
                    source=self.name,
                    snapshot_age_s=age,
                    max_stale_s=self.poll.max_stale_s,
                )
            self.serving = "expired"
            return self.serving
        stale = [
            s.model_copy(
                update={"stale": True, "snapshot_at": snapshot.taken_at, "produced_at": now}
            )
            for s in snapshot.signals
        ]
        await self.handler.on_stale(self.name, stale)
        SNAPSHOT_AGE.labels(self.name).set(age)
        SNAPSHOT_EXPIRED.labels(self.name).set(0)
        self.serving = "stale"
        return self.serving


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            head = b"".join(chunks)[:limit]
            raise ResponseTooLarge(
                f"response exceeds {limit} bytes (its first {limit} kept); page the source", head
            )
    return b"".join(chunks)


@dataclass
class PolledSources:
    """Every polled source of the definitions, started and stopped with the app.

    Args:
        definitions: the sources; those with a `poll` block are polled.
        handler: validates and publishes.
        snapshots: where snapshots are kept (Redis in the service).
        store: the Redis policy of snapshot reads and writes.
        environ: where `poll.auth.env` secrets are read (os.environ in the service).
        max_body_bytes: largest response read.
        clock: the current time.

    Raises:
        PollSecretMissing: at construction, when a source's secret is not where its
            definition says.
    """

    definitions: Definitions
    handler: IngestHandler
    snapshots: SnapshotStore
    store: Policy
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    max_body_bytes: int = 8 * 1024 * 1024
    clock: Callable[[], datetime] = utcnow
    sources: list[PolledSource] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._client = httpx.AsyncClient(follow_redirects=False)
        self._headers = {
            s.name: auth_headers(s, self.environ) for s in self.definitions.sources if s.poll
        }
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.sources = [
            PolledSource(
                s,
                self.handler,
                self.snapshots,
                self._client,
                self._headers[s.name],
                self.store,
                max_body_bytes=self.max_body_bytes,
                clock=self.clock,
            )
            for s in self.definitions.sources
            if s.poll
        ]

    def __bool__(self) -> bool:
        return bool(self.sources)

    def describe(self) -> dict[str, dict[str, Any]]:
        return {s.name: s.describe() for s in self.sources}

    def ready_details(self) -> dict[str, object]:
        """`{"sources": {name: state}}` for the /readyz body; nothing without polled sources."""
        return {"sources": self.describe()} if self.sources else {}

    async def start(self) -> None:
        self._stop.clear()
        self._tasks = [
            asyncio.create_task(s.run(self._stop), name=f"poll {s.name}") for s in self.sources
        ]

    async def stop(self) -> None:
        """Let a poll in flight finish (bounded by its timeout), then close the client."""
        self._stop.set()
        if self._tasks:
            grace = max(s.poll.timeout_s for s in self.sources) + 1.0
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()
