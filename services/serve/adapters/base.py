"""What the serve service needs from the outside: models, a prediction log, model events.

The in-memory fakes in `memory.py` implement the same protocols.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import lightgbm as lgb

from libs.common.schemas import ModelChanged, PredictionMade

OnModelChanged = Callable[[ModelChanged], Awaitable[None]]


class ModelSource(Protocol):
    """A model registry. Both calls block (network, disk); run them in a thread."""

    def version_of(self, name: str, alias: str) -> str | None:
        """The version `alias` points at, or None when the model or alias does not exist."""
        ...

    def load_booster(self, name: str, version: str) -> lgb.Booster:
        """The booster of one registered version (sha256-checked by the real registry)."""
        ...

    def read_file(self, model: str, version: str, name: str) -> str | None:
        """A text file stored with a version (e.g. its category encoding), None if absent."""
        ...

    def traffic_settings(self, model: str) -> tuple[float | None, bool]:
        """The model's stored (challenger fraction, shadow); fraction None when unset."""
        ...

    def set_traffic_settings(self, model: str, fraction: float | None, shadow: bool | None) -> None:
        """Store the model's challenger fraction and shadow mode; None leaves one as is."""
        ...


class PredictionSink(Protocol):
    """The prediction log. `emit` never blocks and never raises: the request goes on."""

    async def start(self) -> None: ...

    def emit(self, items: Sequence[tuple[str, PredictionMade]]) -> None:
        """Queue (key, record) pairs, keyed by entity id."""
        ...

    async def stop(self) -> None: ...

    def stats(self) -> dict[str, int]:
        """Counts of queued, sent, failed and dropped records."""
        ...


class ModelEvents(Protocol):
    """A feed of ModelChanged facts."""

    async def start(self, on_event: OnModelChanged) -> None:
        """Begin delivering events to `on_event` in the background; returns at once."""
        ...

    async def wait_following(self, timeout_s: float) -> bool:
        """True once every event published from now on will be delivered."""
        ...

    def status(self) -> str:
        """following | connecting | what is wrong."""
        ...

    def liveness(self) -> list[str]:
        """What is dead (a loop that will not come back), empty when alive."""
        ...

    async def stop(self) -> None: ...
