"""Per-request priorities and deadlines inside one replica: shed low first, keep high flowing.

Serve has no request priorities (RAY_NOTES.md "Prioritisation"), so each replica
counts its in-flight requests and admits a class only below that class's limit.
Over its limit a request may wait briefly in its class's bounded queue; freed slots
go to high, then normal, then low. A full queue sheds at once, and a request whose
deadline passes while it waits is answered without doing the work (issue 8, item 2).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

from services.serve.errors import BadDeadline, BadPriority, DeadlineExceeded, Overloaded


class Priority(StrEnum):
    high = "high"
    normal = "normal"
    low = "low"


# The order in which freed slots are handed to waiting requests.
_SERVE_ORDER = (Priority.high, Priority.normal, Priority.low)


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


MAX_DEADLINE_MS = 3_600_000  # an hour: anything longer is a client bug, not a budget


def parse_deadline_ms(value: str | None, default_ms: int) -> int:
    """The time budget in ms of an `X-Deadline-Ms` header; absent or empty means the default.

    Raises:
        BadDeadline: not a whole number of milliseconds in 1..3,600,000.
    """
    if value is None or not value.strip():
        return default_ms
    text = value.strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_DEADLINE_MS:
        raise BadDeadline(
            f"X-Deadline-Ms must be a whole number of milliseconds from 1 to "
            f"{MAX_DEADLINE_MS}; got {value[:40]!r}"
        )
    return int(text)


@dataclass(frozen=True)
class Deadline:
    """When a request's budget runs out, on the limiter's monotonic clock (seconds)."""

    at: float

    @classmethod
    def after_ms(cls, budget_ms: int, now: float) -> Deadline:
        return cls(now + budget_ms / 1000)

    def remaining_s(self, now: float) -> float:
        return self.at - now

    def passed(self, now: float) -> bool:
        return now >= self.at


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


@dataclass(frozen=True)
class QueueLimits:
    """How many requests of each class may wait for a slot, and for how long at most.

    A size of 0 turns a class's queue off: over its limit it is shed at once.
    """

    low: int = 0
    normal: int = 0
    high: int = 0
    max_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if min(self.low, self.normal, self.high) < 0 or self.max_wait_s < 0:
            raise ValueError(
                f"queue sizes and max wait must be >= 0, got {self.low}, {self.normal}, "
                f"{self.high}, {self.max_wait_s}"
            )

    def of(self, priority: Priority) -> int:
        return {Priority.low: self.low, Priority.normal: self.normal, Priority.high: self.high}[
            priority
        ]


class PriorityLimiter:
    """Admission control by priority class over one shared in-flight count.

    Not thread-safe by design: it lives on the replica's event loop, where acquire,
    release and the hand-over of a slot to a waiter never interleave. A released slot
    goes straight to the oldest waiter of the highest class it may admit, so a new
    arrival cannot overtake a request that was queued first.
    """

    def __init__(
        self,
        limits: PriorityLimits,
        *,
        queues: QueueLimits | None = None,
        retry_after_s: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.queues = queues or QueueLimits()
        self.retry_after_s = retry_after_s
        self.clock = clock
        self.in_flight = 0
        self.shed: Counter[Priority] = Counter()
        self.expired: Counter[Priority] = Counter()
        self._waiting: dict[Priority, deque[asyncio.Future[None]]] = {p: deque() for p in Priority}

    def waiting(self, priority: Priority) -> int:
        """Requests of `priority` queued for a slot now."""
        return len(self._waiting[priority])

    def try_acquire(self, priority: Priority) -> bool:
        """Take a slot for a request of `priority` now; False means shed (no queueing)."""
        if not self._free_for(priority):
            self.shed[priority] += 1
            return False
        self.in_flight += 1
        return True

    def _free_for(self, priority: Priority) -> bool:
        if self.in_flight >= self.limits.of(priority):
            return False
        # Waiters of this class or a higher one come first.
        for p in _SERVE_ORDER:
            if self._waiting[p]:
                return False
            if p is priority:
                return True
        return True

    def release(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("release() without a matching acquire")
        self.in_flight -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        """Give free slots to waiters: high, then normal, then low, oldest first."""
        for p in _SERVE_ORDER:
            queue = self._waiting[p]
            while queue and self.in_flight < self.limits.of(p):
                waiter = queue.popleft()
                if waiter.done():  # gave up already (cancelled)
                    continue
                self.in_flight += 1
                waiter.set_result(None)
            if queue:
                # This class still waits: lower classes, with lower limits, must too.
                return

    def _overloaded(self, priority: Priority, why: str) -> Overloaded:
        self.shed[priority] += 1
        return Overloaded(
            f"replica busy ({self.in_flight} requests in flight); {priority.value} "
            f"priority requests are shed above {self.limits.of(priority)} ({why})",
            retry_after_s=self.retry_after_s,
        )

    def _expired(self, priority: Priority) -> DeadlineExceeded:
        self.expired[priority] += 1
        return DeadlineExceeded(
            f"the request's deadline passed while it waited for a slot "
            f"({priority.value} priority, {self.in_flight} in flight)",
            retry_after_s=self.retry_after_s,
        )

    async def acquire(self, priority: Priority, deadline: Deadline | None = None) -> None:
        """Take a slot, waiting in the class's queue up to its max wait and the deadline.

        Raises:
            Overloaded: the queue is full (at once) or no slot came within the max wait.
            DeadlineExceeded: the deadline passed before a slot came.
        """
        now = self.clock()
        if deadline is not None and deadline.passed(now):
            raise self._expired(priority)
        if self._free_for(priority):
            self.in_flight += 1
            return
        queue = self._waiting[priority]
        if len(queue) >= self.queues.of(priority) or self.queues.max_wait_s <= 0:
            raise self._overloaded(priority, "queue full")
        wait_s = self.queues.max_wait_s
        # The deadline ends the wait before the max wait does: then a wait that ran out
        # is the deadline's, even when the clock read after the timer is a hair short of
        # it (a timer may fire up to the clock's resolution early).
        until_deadline = deadline is not None and deadline.remaining_s(now) < wait_s
        if deadline is not None:
            wait_s = min(wait_s, deadline.remaining_s(now))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            # asyncio.wait does not cancel the future: a slot handed over at the last
            # moment is seen below instead of being lost.
            await asyncio.wait({waiter}, timeout=max(wait_s, 0.0))
        except BaseException:
            self._give_up(waiter, queue)
            raise
        if waiter.done() and not waiter.cancelled():
            return
        self._give_up(waiter, queue)
        if deadline is not None and (until_deadline or deadline.passed(self.clock())):
            raise self._expired(priority)
        raise self._overloaded(priority, f"no slot within {self.queues.max_wait_s:g}s")

    def _give_up(self, waiter: asyncio.Future[None], queue: deque[asyncio.Future[None]]) -> None:
        if waiter.done() and not waiter.cancelled():
            self.release()  # the slot came while the caller was leaving: pass it on
            return
        waiter.cancel()
        try:
            queue.remove(waiter)
        except ValueError:
            pass

    @asynccontextmanager
    async def admit(
        self, priority: Priority, deadline: Deadline | None = None
    ) -> AsyncIterator[None]:
        """Hold a slot for the block.

        Raises:
            Overloaded: the class is shed now; the caller answers 503 + Retry-After.
            DeadlineExceeded: the deadline passed while waiting; 503 without the work.
        """
        await self.acquire(priority, deadline)
        try:
            yield
        finally:
            self.release()


def seconds_left(deadline: Deadline | None, now: float) -> float:
    """The remaining budget in seconds (infinite without a deadline, never negative)."""
    if deadline is None:
        return math.inf
    return max(deadline.remaining_s(now), 0.0)


DEADLINE_EXCEEDED = "deadline_exceeded"
"""Why an answer is degraded when the request's budget ran out during the feature read."""
