"""Ingest's admin endpoint: dead-letter replay (`POST /v1/admin/dlq/replay`, admin scope).

`signalops dlq replay` calls it. Signals go back through the raw topic and outcomes
through the same handler as `POST /v1/outcomes`, so every replayed record is
validated again by the code that judged it the first time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pydantic import BaseModel, Field

from libs.common.clients.kafka import Publisher
from libs.common.clients.kafka.reader import read_to_end
from libs.common.errors import DependencyUnavailable
from libs.common.http import security_refusal
from libs.common.observability import get_logger, tracer
from libs.common.schemas import DeadLetter
from libs.common.security import KeyRing, SecurityError
from services.ingest.core.batch import split_body
from services.ingest.errors import BatchTooLarge, InvalidBody
from services.ingest.handlers import IngestHandler
from services.ingest.settings import IngestSettings

log = get_logger(__name__)

ReadLetters = Callable[[], Awaitable[list[bytes]]]


class ReplayRequest(BaseModel):
    """Which dead letters to replay, and where signals go."""

    reason: str | None = Field(None, max_length=200, description="Only this reason.")
    to: str | None = Field(
        None, max_length=249, description="Target topic for every letter; default signals.raw."
    )


@dataclass
class ReplayReport:
    """What a replay did: chosen of total, sent, and one line per letter not replayed."""

    total: int
    chosen: int
    target: str
    sent: int = 0
    failed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "dead_letters": self.total,
            "chosen": self.chosen,
            "replayed": self.sent,
            "target": self.target,
            "failed": self.failed,
        }


async def replay_dead_letters(
    letters: list[DeadLetter],
    request: ReplayRequest,
    *,
    handler: IngestHandler,
    publisher: Publisher,
    settings: IngestSettings,
) -> ReplayReport:
    """Send chosen dead letters' original bytes back through ingest.

    Signals (and every letter when `request.to` is set) are published raw to the
    target topic, keyed as they were; outcomes have no raw topic and go through
    `handler.on_outcomes`, where a rejection counts as failed (and is dead-lettered
    again, as over HTTP).
    """
    chosen = [r for r in letters if request.reason is None or r.reason == request.reason]
    target = request.to or settings.topics.raw
    report = ReplayReport(total=len(letters), chosen=len(chosen), target=target)
    for letter in chosen:
        if letter.source == "outcomes" and request.to is None:
            problem = await _replay_outcomes(letter.original, handler, settings)
            if problem is not None:
                report.failed.append(f"{letter.event_id}: {problem}")
                continue
        else:
            await publisher.publish_raw(target, letter.original, key=letter.original_key)
        report.sent += 1
    return report


async def _replay_outcomes(
    body: bytes, handler: IngestHandler, settings: IngestSettings
) -> str | None:
    """Validate and publish outcomes as `POST /v1/outcomes` does; None when all passed."""
    try:
        items = split_body(body, wrapper="outcomes", max_records=settings.max_batch)
    except BatchTooLarge as exc:
        return f"too large: {exc}"
    except InvalidBody as exc:
        await handler.on_invalid_body(body, exc, source="outcomes")
        return f"invalid body: {exc.reason}"
    result = await handler.on_outcomes(items)
    if result.rejected:
        return "rejected again: " + ", ".join(sorted({r.reason for r in result.rejected}))
    return None


def admin_router(
    keys: KeyRing,
    read_letters: ReadLetters,
    replay: Callable[[list[DeadLetter], ReplayRequest], Awaitable[ReplayReport]],
) -> APIRouter:
    """The admin routes; every one needs a key with the admin scope.

    Args:
        keys: the known API keys.
        read_letters: the dead-letter topic's values as they are now.
        replay: `replay_dead_letters` bound to the service's handler and publisher.
    """
    router = APIRouter()

    @router.post("/v1/admin/dlq/replay")
    async def dlq_replay(body: ReplayRequest, request: Request) -> JSONResponse:
        """Replay dead letters (optionally of one reason, optionally to another topic)."""
        try:
            who = keys.authenticate(request.headers, "admin")
        except SecurityError as exc:
            return security_refusal(exc)
        with tracer("ingest").start_as_current_span(
            "ingest.admin_dlq_replay",
            kind=trace.SpanKind.SERVER,
            attributes={"admin.key": who.name, "dlq.reason": body.reason or "*"},
        ) as span:
            try:
                letters = [DeadLetter.from_bytes(b) for b in await read_letters()]
                report = await replay(letters, body)
            except (KafkaError, TimeoutError, OSError, DependencyUnavailable) as exc:
                log.warning(
                    "admin_action_failed", action="dlq_replay", key=who.name, error=repr(exc)
                )
                return JSONResponse(
                    {
                        "error": "broker_unavailable",
                        "message": f"the broker did not answer ({type(exc).__name__}); "
                        "letters sent before it failed are replayed again next time",
                    },
                    status_code=503,
                    headers={"Retry-After": "5"},
                )
            span.set_attribute("dlq.replayed", report.sent)
        log.info(
            "admin_action",
            action="dlq_replay",
            key=who.name,
            reason=body.reason,
            target=report.target,
            chosen=report.chosen,
            replayed=report.sent,
            failed=len(report.failed),
        )
        return JSONResponse(report.to_json())

    return router


def dead_letter_reader(settings: IngestSettings) -> ReadLetters:
    """Reads the whole dead-letter topic as it is now (issue 9 will page through it)."""

    async def read() -> list[bytes]:
        return [
            d.value
            for d in await read_to_end(
                settings.kafka_bootstrap, settings.topics.dlq, client_id="ingest-dlq-replay"
            )
        ]

    return read
