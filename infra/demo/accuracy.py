"""How well each served version answers: the demo's labels against its answers."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

ROLLING = 200  # labels per version in the rolling accuracy


@dataclass(frozen=True)
class Judged:
    """One answer and its label, as the demo saw them."""

    at: float  # live clock, when the label was posted
    version: str
    variant: str  # champion, challenger or fallback
    correct: bool


@dataclass(frozen=True)
class VersionAccuracy:
    version: str
    variant: str
    labels: int
    accuracy: float  # over the newest `size` labels
    first_at: float
    last_at: float


class RollingAccuracy:
    """Accuracy of each served version and variant over its newest `size` labels."""

    def __init__(self, size: int = ROLLING) -> None:
        self.size = size
        self._windows: dict[tuple[str, str], deque[bool]] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._first: dict[tuple[str, str], float] = {}
        self._last: dict[tuple[str, str], float] = {}

    def add(self, j: Judged) -> None:
        key = (j.version, j.variant)
        self._windows.setdefault(key, deque(maxlen=self.size)).append(j.correct)
        self._counts[key] += 1
        self._first.setdefault(key, j.at)
        self._last[key] = j.at

    def rows(self) -> list[VersionAccuracy]:
        """One row per (version, variant), in the order they first answered."""
        return sorted(
            (
                VersionAccuracy(
                    v,
                    variant,
                    self._counts[(v, variant)],
                    sum(w) / len(w),
                    self._first[(v, variant)],
                    self._last[(v, variant)],
                )
                for (v, variant), w in self._windows.items()
            ),
            key=lambda r: (r.first_at, r.version, r.variant),
        )
