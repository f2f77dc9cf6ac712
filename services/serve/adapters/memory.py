"""In-memory model source, prediction log and model events: the fakes for serve tests."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import lightgbm as lgb

from libs.common.schemas import ModelChanged, PredictionMade
from services.serve.adapters.base import OnModelChanged


@dataclass
class MemoryModelSource:
    """Registered boosters and their files by (name, version), aliases by (name, alias)."""

    boosters: dict[tuple[str, str], lgb.Booster] = field(default_factory=dict)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)
    loads: Counter[tuple[str, str]] = field(default_factory=Counter)
    files: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    fractions: dict[str, float] = field(default_factory=dict)
    shadows: dict[str, bool] = field(default_factory=dict)

    def register(
        self,
        name: str,
        version: str,
        booster: lgb.Booster,
        alias: str | None = "champion",
        files: dict[str, str] | None = None,
    ) -> None:
        self.boosters[(name, version)] = booster
        self.files[(name, version)] = dict(files or {})
        if alias:
            self.aliases[(name, alias)] = version

    def version_of(self, name: str, alias: str) -> str | None:
        return self.aliases.get((name, alias))

    def load_booster(self, name: str, version: str) -> lgb.Booster:
        self.loads[(name, version)] += 1
        return self.boosters[(name, version)]

    def read_file(self, model: str, version: str, name: str) -> str | None:
        return self.files.get((model, version), {}).get(name)

    def traffic_settings(self, model: str) -> tuple[float | None, bool]:
        return self.fractions.get(model), self.shadows.get(model, False)

    def set_traffic_settings(self, model: str, fraction: float | None, shadow: bool | None) -> None:
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"challenger fraction must be within 0..1, got {fraction}")
        if fraction is not None:
            self.fractions[model] = fraction
        if shadow is not None:
            self.shadows[model] = shadow


@dataclass
class MemoryPredictionLog:
    records: list[tuple[str, PredictionMade]] = field(default_factory=list)

    async def start(self) -> None:
        return None

    def emit(self, items: Sequence[tuple[str, PredictionMade]]) -> None:
        self.records.extend(items)

    async def stop(self) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {"queued": 0, "sent": len(self.records), "failed": 0, "dropped": 0}


@dataclass
class MemoryModelEvents:
    queue: asyncio.Queue[ModelChanged] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    async def start(self, on_event: OnModelChanged) -> None:
        async def deliver() -> None:
            while True:
                await on_event(await self.queue.get())

        self.task = asyncio.create_task(deliver())

    async def publish(self, event: ModelChanged) -> None:
        await self.queue.put(event)

    async def wait_following(self, timeout_s: float) -> bool:
        return self.task is not None

    def status(self) -> str:
        return "following" if self.task is not None and not self.task.done() else "off"

    def liveness(self) -> list[str]:
        return ["model events task ended"] if self.task is not None and self.task.done() else []

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
