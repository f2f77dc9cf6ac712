"""The CLI's side of `signalops dlq`: page through ingest's admin endpoints until the
cursor runs out, so every dead letter is seen with bounded memory on both sides."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from infra.admin_client import admin_call
from libs.common.settings import Settings


@dataclass(frozen=True)
class LetterQuery:
    """Which dead letters (None matches all); times are when the record was rejected."""

    reason: str | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    page_size: int | None = None

    def params(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "source": self.source,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "page_size": self.page_size,
        }


def pages(
    call: Callable[[dict[str, Any]], dict[str, Any]], params: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Every page `call(params + cursor)` answers, following the cursor to its end."""
    cursor: str | None = None
    while True:
        page = call({**params, "cursor": cursor})
        yield page
        cursor = page.get("cursor")
        if cursor is None:
            return


def list_pages(
    settings: Settings, query: LetterQuery, *, transport: httpx.BaseTransport | None = None
) -> Iterator[dict[str, Any]]:
    """Pages of `GET /v1/admin/dlq`: {"letters", "scanned", "remaining", "cursor"}."""

    def call(params: dict[str, Any]) -> dict[str, Any]:
        return admin_call(
            settings, "ingest", "GET", "/v1/admin/dlq", params=params, transport=transport
        )

    return pages(call, query.params())


def replay_pages(
    settings: Settings,
    query: LetterQuery,
    to: str | None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> Iterator[dict[str, Any]]:
    """Pages of `POST /v1/admin/dlq/replay`: {"results", "counts", "remaining", "cursor"}.

    Stopping between pages is safe: a re-run skips what was replayed.
    """

    def call(params: dict[str, Any]) -> dict[str, Any]:
        return admin_call(
            settings, "ingest", "POST", "/v1/admin/dlq/replay", params, transport=transport
        )

    return pages(call, {**query.params(), "to": to})
