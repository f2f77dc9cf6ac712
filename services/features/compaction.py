"""Background compaction of the offline store: past days' many batch files into one each.

Today's date folder is still being written to and is left alone (issue 7).
"""

from __future__ import annotations

import asyncio
import time

from libs.common.observability import get_logger
from libs.common.offline import (
    OUTCOMES,
    PREDICTIONS,
    SIGNALS,
    CompactionResult,
    OfflineStore,
    date_of,
)

log = get_logger(__name__)

KINDS = (SIGNALS, OUTCOMES, PREDICTIONS)


async def compact_periodically(store: OfflineStore, every_s: float, stop: asyncio.Event) -> None:
    """Every `every_s` seconds, compact every kind's date folders before today (UTC).

    The first pass runs `every_s` after the start, not at once, so a restarting
    service does not add file I/O to its startup. Errors are logged and the loop goes
    on; it returns when `stop` is set (also while waiting).

    Args:
        store: the offline store (its own root; included roots are not compacted).
        every_s: seconds between passes, > 0.
        stop: set to end the loop.
    """
    if every_s <= 0:
        raise ValueError(f"every_s is {every_s}; pass a positive number of seconds, e.g. 3600")
    while not await _stopped(stop, every_s):
        await compact_once(store, now=time.time())


async def compact_once(store: OfflineStore, *, now: float) -> list[CompactionResult]:
    """One pass: compact each date folder of each kind strictly before `now`'s UTC date.

    Each folder runs in a worker thread; a failing folder is logged and skipped, the
    others still run.

    Returns:
        The result of every folder compacted without error (including no-ops).
    """
    today = date_of(now)
    results: list[CompactionResult] = []
    for kind in KINDS:
        try:
            dates = await asyncio.to_thread(store.dates, kind)
        except Exception:
            log.exception("offline_compaction_failed", kind=kind, root=store.root)
            continue
        for date in (d for d in dates if d < today):
            started = time.perf_counter()
            try:
                result = await asyncio.to_thread(store.compact, kind, date)
            except Exception:
                log.exception("offline_compaction_failed", kind=kind, date=date, root=store.root)
                continue
            results.append(result)
            if result.files_merged:
                log.info(
                    "offline_compacted",
                    kind=kind,
                    date=date,
                    files_merged=result.files_merged,
                    rows=result.rows,
                    dropped=result.dropped,
                    path=result.path,
                    seconds=round(time.perf_counter() - started, 3),
                )
    return results


async def _stopped(stop: asyncio.Event, timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), timeout=timeout_s)
    except TimeoutError:
        return False
    return True
