"""Ingest's admin endpoints over signals.dlq (admin scope): list and replay, page by page.

`signalops dlq list|replay` call them with the cursor each answer returns until it is
null, so every dead letter is seen, from each partition's beginning to its end as it
was at the first page. Signals go back through the raw topic and outcomes through the
same handler as `POST /v1/outcomes`, so a replayed record is judged again by the code
that judged it first. A letter is recorded as replayed (Redis) only after its replay
was acknowledged, and a recorded letter is never replayed again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pydantic import AwareDatetime, BaseModel, Field, ValidationError

from libs.common.clients.kafka import Publisher
from libs.common.clients.kafka.pages import Cursor, InvalidCursor, Page
from libs.common.errors import DependencyUnavailable
from libs.common.http import security_refusal
from libs.common.observability import get_logger, tracer
from libs.common.schemas import DeadLetter, Signal
from libs.common.security import KeyRing, SecurityError
from services.ingest.core.batch import split_body
from services.ingest.core.dead_letters import LetterFilter, ReplayLine, ReplayOutcome
from services.ingest.core.dedup import dedup_key
from services.ingest.errors import BatchTooLarge, InvalidBody
from services.ingest.handlers import OUTCOMES, SERVICE, IngestHandler
from services.ingest.settings import IngestSettings

log = get_logger(__name__)

ReadPage = Callable[[Cursor | None, int], Awaitable[Page]]
RAW_CHUNK = 100  # raw replays in flight at once; each chunk is recorded once acknowledged


class ReplayLedger(Protocol):
    """Ids of dead letters already replayed (services/ingest/dedup.py)."""

    async def replayed(self, ids: Sequence[str]) -> set[str]: ...

    async def record(self, ids: Sequence[str]) -> None: ...


class LetterQuery(BaseModel):
    """Which dead letters, and where a listing goes on from."""

    reason: str | None = Field(None, max_length=200, description="Only this reason.")
    source: str | None = Field(None, max_length=256, description="Only this source.")
    since: AwareDatetime | None = Field(None, description="Rejected at or after this time.")
    until: AwareDatetime | None = Field(None, description="Rejected before this time.")
    cursor: str | None = Field(
        None, max_length=8192, description="From the previous page's answer; none to start."
    )
    page_size: int | None = Field(None, ge=1, le=10000, description="Records read per page.")

    def letter_filter(self) -> LetterFilter:
        return LetterFilter(self.reason, self.source, self.since, self.until)


class ReplayRequest(LetterQuery):
    """Which dead letters to replay, and where signals go."""

    to: str | None = Field(
        None, max_length=249, description="Target topic for every letter; default signals.raw."
    )


@dataclass
class Letters:
    """One page read: the letters (with their position), unreadable records, the next cursor."""

    letters: list[tuple[int, int, DeadLetter]]
    unreadable: int
    scanned: int
    cursor: Cursor | None
    remaining: int

    def page_json(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "unreadable": self.unreadable,
            "remaining": self.remaining,
            "cursor": self.cursor.encode() if self.cursor else None,
        }


async def read_letters(read_page: ReadPage, query: LetterQuery, default_size: int) -> Letters:
    """One page of dead letters matching `query`. Raises InvalidCursor."""
    cursor = Cursor.decode(query.cursor) if query.cursor else None
    page = await read_page(cursor, query.page_size or default_size)
    chosen, unreadable, match = [], 0, query.letter_filter()
    for partition, offset, value in page.records:
        try:
            letter = DeadLetter.from_bytes(value)
        except ValidationError:
            unreadable += 1  # not written by signalops: listed as a count, never replayed
            continue
        if match.matches(letter):
            chosen.append((partition, offset, letter))
    return Letters(chosen, unreadable, len(page.records), page.cursor, page.remaining)


@dataclass
class DeadLetterReplayer:
    """Replays chosen dead letters, each at most once.

    Args:
        handler: validates replayed outcomes as `POST /v1/outcomes` does.
        publisher: sends signals' original bytes to the raw (or chosen) topic.
        ledger: the ids already replayed.
        settings: topic names and body limits.
    """

    handler: IngestHandler
    publisher: Publisher
    ledger: ReplayLedger
    settings: IngestSettings

    async def replay(self, letters: Sequence[DeadLetter], to: str | None) -> list[ReplayLine]:
        """One line per letter, in order. Raises DependencyUnavailable (Redis or the
        broker), KafkaError, TimeoutError: what was acknowledged before is recorded."""
        target = to or self.settings.topics.raw
        done = await self.ledger.replayed(sorted({x.event_id for x in letters}))
        lines: dict[int, ReplayLine] = {}
        raw: list[tuple[int, DeadLetter]] = []
        for i, x in enumerate(letters):
            if x.event_id in done:
                lines[i] = _line(x, ReplayOutcome.SKIPPED, "replayed before")
                continue
            done.add(x.event_id)  # a letter written twice to the topic is replayed once
            if x.source == OUTCOMES and to is None:
                lines[i] = await self._outcomes(x)
                if lines[i].outcome is ReplayOutcome.ACCEPTED:
                    await self.ledger.record([x.event_id])
            else:
                raw.append((i, x))
        await self._forget_accepted([x for _, x in raw])
        for start in range(0, len(raw), RAW_CHUNK):
            chunk = raw[start : start + RAW_CHUNK]
            sent = await asyncio.gather(
                *(
                    self.publisher.publish_raw(target, x.original, key=x.original_key)
                    for _, x in chunk
                ),
                return_exceptions=True,
            )
            acked = [(i, x) for (i, x), r in zip(chunk, sent, strict=True) if r is None]
            await self.ledger.record([x.event_id for _, x in acked])
            for i, x in acked:
                lines[i] = _line(x, ReplayOutcome.REPLAYED, f"to {target}")
            failure = next((r for r in sent if isinstance(r, BaseException)), None)
            if failure is not None:
                raise failure
        return [lines[i] for i in sorted(lines)]

    async def _forget_accepted(self, letters: Sequence[DeadLetter]) -> None:
        """Letters of a later stage (features) hold records ingest accepted: without
        this the dedup window would drop them as duplicates instead of judging them."""
        keys = []
        for x in letters:
            if x.stage != SERVICE and self.handler.dedup.enabled:
                try:
                    keys.append(
                        dedup_key(self.settings.topics.valid, Signal.from_bytes(x.original))
                    )
                except ValidationError:
                    continue  # not a signal: never accepted, nothing to forget
        await self.handler.dedup.forget(keys)

    async def _outcomes(self, letter: DeadLetter) -> ReplayLine:
        body = letter.original
        try:
            items = split_body(body, wrapper="outcomes", max_records=self.settings.max_batch)
        except BatchTooLarge as exc:
            return _line(letter, ReplayOutcome.REJECTED, f"{exc.reason}: {exc}")
        except InvalidBody as exc:
            await self.handler.on_invalid_body(body, exc, source=OUTCOMES)
            return _line(letter, ReplayOutcome.REJECTED, f"{exc.reason}: {exc}")
        result = await self.handler.on_outcomes(items)
        if result.rejected:
            why = ", ".join(sorted({f"{r.reason}: {r.detail}" for r in result.rejected}))
            return _line(letter, ReplayOutcome.REJECTED, why)
        dup = f" ({len(result.duplicates)} already accepted)" if result.duplicates else ""
        return _line(letter, ReplayOutcome.ACCEPTED, f"to {self.settings.topics.outcomes}{dup}")


def _line(letter: DeadLetter, outcome: ReplayOutcome, detail: str) -> ReplayLine:
    return ReplayLine(letter.event_id, letter.source, letter.reason, outcome, detail)


def admin_router(
    keys: KeyRing, read_page: ReadPage, replayer: DeadLetterReplayer, page_size: int
) -> APIRouter:
    """The admin routes; every one needs a key with the admin scope.

    Args:
        keys: the known API keys.
        read_page: reads one page of signals.dlq (TopicPages.page).
        replayer: replays letters at most once.
        page_size: records per page when the request names none.
    """
    router = APIRouter()

    @router.get("/v1/admin/dlq")
    async def dlq_list(request: Request, query: Annotated[LetterQuery, Query()]) -> JSONResponse:
        """One page of dead letters matching the query, and the cursor of the next."""
        try:
            who = keys.authenticate(request.headers, "admin")
        except SecurityError as exc:
            return security_refusal(exc)
        try:
            page = await read_letters(read_page, query, page_size)
        except InvalidCursor as exc:
            return JSONResponse({"error": "invalid_cursor", "message": str(exc)}, 400)
        except (KafkaError, TimeoutError, OSError) as exc:
            return _unavailable("dlq_list", who.name, exc)
        letters = [
            {"partition": p, "offset": o, **x.model_dump(mode="json")} for p, o, x in page.letters
        ]
        return JSONResponse({"letters": letters, **page.page_json()})

    @router.post("/v1/admin/dlq/replay")
    async def dlq_replay(body: ReplayRequest, request: Request) -> JSONResponse:
        """Replay one page of matching dead letters; the answer says what each became."""
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
                page = await read_letters(read_page, body, page_size)
                lines = await replayer.replay([x for _, _, x in page.letters], body.to)
            except InvalidCursor as exc:
                return JSONResponse({"error": "invalid_cursor", "message": str(exc)}, 400)
            except (KafkaError, TimeoutError, OSError, DependencyUnavailable) as exc:
                return _unavailable("dlq_replay", who.name, exc)
            counts = Counter(line.outcome.value for line in lines)
            span.set_attribute("dlq.replayed", counts[ReplayOutcome.REPLAYED.value])
        log.info(
            "admin_action",
            action="dlq_replay",
            key=who.name,
            reason=body.reason,
            source=body.source,
            target=body.to,
            scanned=page.scanned,
            **counts,
        )
        return JSONResponse(
            {
                "target": body.to or replayer.settings.topics.raw,
                "chosen": len(lines),
                "counts": dict(counts),
                "results": [line.to_json() for line in lines],
                **page.page_json(),
            }
        )

    return router


def _unavailable(action: str, who: str, exc: BaseException) -> JSONResponse:
    """503: the broker or Redis did not answer; what was acknowledged is recorded."""
    log.warning("admin_action_failed", action=action, key=who, error=repr(exc))
    return JSONResponse(
        {
            "error": "dependency_unavailable",
            "message": f"the broker or Redis did not answer ({type(exc).__name__}: {exc}); "
            "letters already replayed are recorded and skipped when you run it again",
        },
        status_code=503,
        headers={"Retry-After": "5"},
    )
