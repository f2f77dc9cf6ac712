"""Which accepted records are duplicates: the keys of the dedup window, and the split.

A record's identity is its kind (the topic it goes to), its source and its event id;
the event id of a record sent without one is derived from its content with the event
time normalised to its UTC instant (libs.common.schemas.base.with_content_id), so
"same source and natural key" and "same event id" are one check.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from libs.common.schemas import Message
from services.ingest.core.verdicts import Judged


class DedupWindow(Protocol):
    """The keys of records accepted within the window (adapter: services/ingest/dedup.py)."""

    enabled: bool  # False: no dedup at all, not even within one batch

    async def seen(self, keys: Sequence[str]) -> set[str] | None:
        """Those of `keys` already marked, in one round trip; None when the window
        could not be asked (fail open: the caller accepts and counts them unchecked)."""
        ...

    async def mark(self, keys: Sequence[str]) -> None:
        """Mark `keys` seen for the window, in one round trip; never raises (a failed
        mark only lets a later duplicate through, downstream is idempotent)."""
        ...

    async def forget(self, keys: Sequence[str]) -> None:
        """Unmark `keys` (a replayed record ingest had accepted must be judged again).
        Raises DependencyUnavailable."""
        ...


class NoDedupWindow:
    """Dedup disabled (SIGNALOPS_DEDUP_ENABLED=false, and handler tests)."""

    enabled = False

    async def seen(self, keys: Sequence[str]) -> set[str] | None:
        return set()

    async def mark(self, keys: Sequence[str]) -> None:
        return None

    async def forget(self, keys: Sequence[str]) -> None:
        return None


class MemoryDedupWindow:
    """An in-process window without expiry: the test fake of the Redis one."""

    enabled = True

    def __init__(self) -> None:
        self.keys: set[str] = set()

    async def seen(self, keys: Sequence[str]) -> set[str] | None:
        return self.keys.intersection(keys)

    async def mark(self, keys: Sequence[str]) -> None:
        self.keys.update(keys)

    async def forget(self, keys: Sequence[str]) -> None:
        self.keys.difference_update(keys)


def dedup_key(kind: str, message: Message) -> str:
    """The window key of `message` going to topic `kind` (a source-scoped event id)."""
    source = getattr(message, "source", None) or getattr(message, "model", "")
    return f"dedup:{kind}:{source}:{message.event_id}"


def split_duplicates(judged: Judged, keys: Sequence[str], seen: Collection[str]) -> Judged:
    """`judged` with the valid records whose key is in `seen`, or repeats one earlier in
    the same batch, moved to `duplicates` (the first occurrence wins).

    Args:
        judged: the batch's verdicts.
        keys: the dedup key of each of `judged.valid`, in order.
        seen: the keys already accepted within the window.
    """
    out = Judged(rejected=judged.rejected, duplicates=list(judged.duplicates))
    taken: set[str] = set()
    for (item, message), key in zip(judged.valid, keys, strict=True):
        if key in seen or key in taken:
            out.duplicates.append((item, message))
        else:
            taken.add(key)
            out.valid.append((item, message))
    return out
