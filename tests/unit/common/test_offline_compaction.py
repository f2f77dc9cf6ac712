"""Compaction of the offline store in the background and from `signalops features compact`."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.cli import app
from libs.common.offline import OUTCOMES, CompactionResult, OfflineStore
from services.features.compaction import compact_once, compact_periodically

MIDNIGHT = datetime(2026, 11, 22, tzinfo=UTC).timestamp()
DAY = 86_400.0


def _row(event_id: str, ts: float) -> dict[str, object]:
    return {
        "event_id": event_id,
        "model": "m",
        "entity_id": "e",
        "ts": ts,
        "label": 1.0,
        "prediction_id": None,
    }


def _two_files_per_day(store: OfflineStore, *days_back: int, today: float = MIDNIGHT) -> None:
    for day in days_back:
        for batch in ("x", "y"):
            store.append(OUTCOMES, [_row(f"{day}{batch}", today - day * DAY)], name=batch)


def test_compact_once_leaves_today_alone(tmp_path: Path) -> None:
    """Past dates of every kind are compacted; today's folder keeps its batch files."""
    store = OfflineStore(tmp_path)
    _two_files_per_day(store, 1, 0)
    results = asyncio.run(compact_once(store, now=MIDNIGHT + 60))
    assert [(r.kind, r.date, r.files_merged) for r in results] == [(OUTCOMES, "2026-11-21", 2)]
    assert len(store.files(OUTCOMES)) == 3


def test_a_failing_folder_is_logged_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error compacting one date does not stop the pass (nor the loop)."""
    store = OfflineStore(tmp_path)
    _two_files_per_day(store, 2, 1)
    compact = store.compact

    def flaky(kind: str, date: str) -> CompactionResult:
        if date == "2026-11-20":
            raise OSError("disk full")
        return compact(kind, date)

    monkeypatch.setattr(store, "compact", flaky)
    results = asyncio.run(compact_once(store, now=MIDNIGHT))
    assert [(r.date, r.files_merged) for r in results] == [("2026-11-21", 2)]


def test_compact_periodically_runs_until_stopped(tmp_path: Path) -> None:
    """The loop compacts on its interval and returns promptly once `stop` is set."""
    store = OfflineStore(tmp_path)
    today = time.time()
    _two_files_per_day(store, 1, today=today)

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(compact_periodically(store, 0.01, stop))
        # Wait (bounded) for the first pass to merge yesterday's two files.
        for _ in range(500):
            if len(store.files(OUTCOMES)) == 1:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(run())
    assert len(store.files(OUTCOMES)) == 1


def test_compact_periodically_refuses_a_non_positive_interval(tmp_path: Path) -> None:
    """A zero interval would spin; it is refused with the fix."""
    with pytest.raises(ValueError, match=r"every_s is 0; pass a positive number"):
        asyncio.run(compact_periodically(OfflineStore(tmp_path), 0, asyncio.Event()))


def test_cli_features_compact_shows_what_it_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`signalops features compact --before` compacts the configured store and prints
    each date with the files merged and rows kept."""
    monkeypatch.setenv("SIGNALOPS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    store = OfflineStore(tmp_path / "offline")
    _two_files_per_day(store, 1, 0)
    result = CliRunner().invoke(app, ["features", "compact", "--before", "2026-11-22"])
    assert result.exit_code == 0, result.output
    assert "2026-11-21" in result.output and "2026-11-22" not in result.output
    assert "1 date folders compacted" in result.output
    assert len(store.files(OUTCOMES)) == 3
