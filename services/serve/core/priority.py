"""Per-request priorities inside one replica: shed low first, keep high flowing.

Serve has no request priorities (RAY_NOTES.md "Prioritisation"), so each replica
counts its in-flight requests and admits a class only below that class's limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from services.serve.errors import BadPriority, Overloaded


class Priority(StrEnum):
    high = "high"
    normal = "normal"
    low = "low"


def parse_priority(value: str | None) -> Priority:
    """The priority of an `X-Priority` header value; absent or empty means normal.

    Raises:
        BadPriority: naming the value and the allowed ones.
    """
    if value is None or not value.strip():
        return Priority.normal
    try:
        return Priority(value.strip().lower())
    except ValueError:
        raise BadPriority(
            f"X-Priority must be one of high, normal, low; got {value[:40]!r}"
        ) from None


@dataclass(frozen=True)
class PriorityLimits:
    """In-flight thresholds: a class is admitted while in-flight is below its limit."""

    low: int
    normal: int
    hard_cap: int

    def __post_init__(self) -> None:
        if not (1 <= self.low <= self.normal <= self.hard_cap):
            raise ValueError(
                f"limits must satisfy 1 <= low <= normal <= hard_cap, got "
                f"{self.low}, {self.normal}, {self.hard_cap}"
            )

    def of(self, priority: Priority) -> int:
        if priority is Priority.low:
            return self.low
        if priority is Priority.normal:
            return self.normal
        return self.hard_cap


class PriorityLimiter:
    """Admission control by priority class over one shared in-flight count.

    Not thread-safe by design: it lives on the replica's event loop, where
    acquire and release never interleave with each other.
    """

    def __init__(self, limits: PriorityLimits, *, retry_after_s: int = 1) -> None:
        self.limits = limits
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.shed: Counter[Priority] = Counter()

    def try_acquire(self, priority: Priority) -> bool:
        """Take a slot for a request of `priority`; False means shed it."""
        if self.in_flight >= self.limits.of(priority):
            self.shed[priority] += 1
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("release() without a matching acquire")
        self.in_flight -= 1

    @contextmanager
    def admit(self, priority: Priority) -> Iterator[None]:
        """Hold a slot for the block.

        Raises:
            Overloaded: the class is shed now; the caller answers 429 + Retry-After.
        """
        if not self.try_acquire(priority):
            raise Overloaded(
                f"replica busy ({self.in_flight} requests in flight); {priority.value} "
                f"priority requests are shed above {self.limits.of(priority)}",
                retry_after_s=self.retry_after_s,
            )
        try:
            yield
        finally:
            self.release()
