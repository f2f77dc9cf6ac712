"""Reading drift.events and models.events, the platform's answers to the drift."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from infra.demo.state import DemoState
from libs.common.schemas import DriftDetected, Message, ModelChanged
from libs.common.settings import Settings

M = TypeVar("M", bound=Message)


class TopicWatcher(threading.Thread):
    """Re-reads drift.events and models.events every few seconds (small topics)."""

    def __init__(self, settings: Settings, every_s: float = 2.0) -> None:
        super().__init__(name="demo-topics", daemon=True)
        self._settings = settings
        self._every_s = every_s
        self._stop = threading.Event()
        self.drift: list[DriftDetected] = []
        self.models: list[ModelChanged] = []
        self.errors = 0

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        from infra.kafka_tools import read_values

        s = self._settings

        async def read() -> tuple[list[bytes], list[bytes]]:
            drift = await read_values(s.kafka_bootstrap, s.topics.drift)
            models = await read_values(s.kafka_bootstrap, s.topics.models)
            return drift, models

        while not self._stop.is_set():
            try:
                drift, models = asyncio.run(read())
                self.drift = _decode(DriftDetected.from_bytes, drift)
                self.models = _decode(ModelChanged.from_bytes, models)
            except Exception:  # the view keeps what it had; counted
                self.errors += 1
            self._stop.wait(self._every_s)


def _decode(parse: Callable[[bytes], Any], values: list[bytes]) -> list[Any]:
    out = []
    for v in values:
        try:
            out.append(parse(v))
        except ValueError:
            continue
    return out


def note_new_events(
    state: DemoState, watcher: TopicWatcher, seen_events: set[str], seen_models: set[str]
) -> None:
    """Notes for drift and model events published since the demo started."""
    for e in _unseen(watcher.drift, seen_events, state.demo_wall):
        cp = f", change point {state.at(e.change_point):.1f}s" if e.change_point else ""
        state.note(f"drift event: {e.kind} {e.feature} ({e.statistic}) on v{e.version}{cp}")
    for m in _unseen(watcher.models, seen_models, state.demo_wall):
        alias = f" as {m.alias}" if m.alias else ""
        state.note(f"model event: v{m.version} {m.kind}{alias}")


def _unseen(events: list[M], seen: set[str], since_wall: float) -> Iterator[M]:
    """The events not in `seen` and produced from `since_wall` on, adding each to `seen`."""
    for e in events:
        if e.event_id in seen or e.produced_at.timestamp() < since_wall:
            continue
        seen.add(e.event_id)
        yield e
