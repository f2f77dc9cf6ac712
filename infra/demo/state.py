"""What the demo has seen so far: counters, labels judged, notes, the live clock."""

from __future__ import annotations

import time
from collections import Counter, deque
from datetime import datetime

from rich.console import Console

from infra.demo.accuracy import Judged, RollingAccuracy


class DemoState:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.phase = "starting"
        self.sent = Counter[str]()
        self.accepted = 0
        self.rejected = Counter[str]()
        self.outcomes = 0
        self.predictions = 0
        self.degraded = 0
        self.stale = 0
        self.latencies: deque[float] = deque(maxlen=500)
        self.freshness: deque[float] = deque(maxlen=200)
        self.errors = Counter[str]()
        self.events: deque[str] = deque(maxlen=6)
        self.rolling = RollingAccuracy()
        self.judged: list[Judged] = []
        self.demo_wall = time.time()  # when the demo started (events before are old)
        self.live_wall: float | None = None  # wall time of the live clock's zero
        self.drift_at: float | None = None
        self.flipped = False
        self.serving = "-"
        self.outage = False

    def elapsed(self) -> float:
        return 0.0 if self.live_wall is None else time.time() - self.live_wall

    def at(self, when: datetime) -> float:
        """A wall time on the live clock."""
        return when.timestamp() - (self.live_wall or time.time())

    def note(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {text}"
        self.events.append(line)
        if not self.console.is_terminal:  # a log, not a screen: print as it happens
            self.console.print(line, highlight=False)
