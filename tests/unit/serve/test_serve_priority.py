"""The in-replica priority limiter: bounded queues per class, high served first, low shed
first and at once when its queue is full, deadlines honoured while waiting."""

from __future__ import annotations

import asyncio

import pytest

from services.serve.core.priority import (
    Deadline,
    Priority,
    PriorityLimiter,
    PriorityLimits,
    QueueLimits,
    parse_deadline_ms,
    parse_priority,
    seconds_left,
)
from services.serve.errors import BadDeadline, BadPriority, DeadlineExceeded, Overloaded

LIMITS = PriorityLimits(low=2, normal=4, hard_cap=6)
# Long waits: in these tests a slot comes from a release, never from the timer.
QUEUES = QueueLimits(low=2, normal=2, high=2, max_wait_s=60.0)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, Priority.normal),
        ("", Priority.normal),
        ("high", Priority.high),
        ("HIGH", Priority.high),
        (" low ", Priority.low),
        ("normal", Priority.normal),
    ],
)
def test_parse_priority(header: str | None, expected: Priority) -> None:
    """Header values map to priorities case-insensitively; absent means normal."""
    assert parse_priority(header) is expected


@pytest.mark.parametrize("header", ["urgent", "1", "hi gh"])
def test_parse_priority_rejects_unknown_values(header: str) -> None:
    """An unknown X-Priority value is an error naming the value and the allowed ones."""
    with pytest.raises(BadPriority, match=rf"high, normal, low; got '{header}'"):
        parse_priority(header)


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, 1000), ("", 1000), ("250", 250), (" 5 ", 5), ("3600000", 3_600_000)],
)
def test_parse_deadline(header: str | None, expected: int) -> None:
    """X-Deadline-Ms is a budget in whole ms; absent or empty means the default."""
    assert parse_deadline_ms(header, 1000) == expected


@pytest.mark.parametrize("header", ["0", "-5", "1.5", "abc", "3600001", "١٢", "1e3"])
def test_parse_deadline_rejects_bad_values(header: str) -> None:
    """Zero, negative, fractional, non-ASCII digits or over an hour: 400 naming the value."""
    with pytest.raises(BadDeadline, match="X-Deadline-Ms must be a whole number"):
        parse_deadline_ms(header, 1000)


def test_deadline_arithmetic() -> None:
    """A deadline is arrival plus budget; what is left never goes negative."""
    deadline = Deadline.after_ms(250, now=10.0)
    assert deadline.at == 10.25 and not deadline.passed(10.2) and deadline.passed(10.25)
    assert seconds_left(deadline, 10.0) == pytest.approx(0.25)
    assert seconds_left(deadline, 11.0) == 0.0
    assert seconds_left(None, 11.0) == float("inf")


@pytest.mark.parametrize(
    ("in_flight", "priority", "admitted"),
    [
        (0, Priority.low, True),
        (1, Priority.low, True),
        (2, Priority.low, False),
        (2, Priority.normal, True),
        (3, Priority.normal, True),
        (4, Priority.normal, False),
        (4, Priority.high, True),
        (5, Priority.high, True),
        (6, Priority.high, False),
        (9, Priority.low, False),
    ],
)
def test_admission_table(in_flight: int, priority: Priority, admitted: bool) -> None:
    """A class is admitted at once only while in-flight requests are below its limit."""
    limiter = PriorityLimiter(LIMITS)
    limiter.in_flight = in_flight
    assert limiter.try_acquire(priority) is admitted
    assert limiter.in_flight == in_flight + (1 if admitted else 0)
    assert limiter.shed[priority] == (0 if admitted else 1)


async def test_full_queue_sheds_at_once_with_retry_after() -> None:
    """Over its limit with its queue full, a request is shed without waiting: 503 material."""
    limiter = PriorityLimiter(LIMITS, queues=QUEUES, retry_after_s=3)
    limiter.in_flight = 2
    waiters = [asyncio.create_task(limiter.acquire(Priority.low)) for _ in range(2)]
    await asyncio.sleep(0)
    assert limiter.waiting(Priority.low) == 2
    with pytest.raises(Overloaded, match="low priority requests are shed above 2") as exc:
        await limiter.acquire(Priority.low)
    assert exc.value.retry_after_s == 3 and "queue full" in str(exc.value)
    assert limiter.shed[Priority.low] == 1
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert limiter.waiting(Priority.low) == 0 and limiter.in_flight == 2


async def test_no_queue_means_shed_at_once() -> None:
    """With queues off (the default) the limiter sheds over the limit, as before."""
    limiter = PriorityLimiter(LIMITS)
    limiter.in_flight = 4
    with pytest.raises(Overloaded):
        await limiter.acquire(Priority.normal)
    await limiter.acquire(Priority.high)
    assert limiter.in_flight == 5


async def test_freed_slots_go_to_high_then_normal_then_low() -> None:
    """Waiters queued low, normal, high (in that order) get slots high, normal, low."""
    limiter = PriorityLimiter(PriorityLimits(low=1, normal=1, hard_cap=1), queues=QUEUES)
    await limiter.acquire(Priority.high)  # the one slot is taken
    order: list[Priority] = []

    async def wait(p: Priority) -> None:
        await limiter.acquire(p)
        order.append(p)

    tasks = []
    for p in (Priority.low, Priority.normal, Priority.high):
        tasks.append(asyncio.create_task(wait(p)))
        await asyncio.sleep(0)  # queued in this order
    for _ in range(3):
        limiter.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [Priority.high, Priority.normal, Priority.low]
    assert limiter.in_flight == 1  # the low request holds the slot now


async def test_a_new_arrival_does_not_overtake_a_waiter() -> None:
    """A released slot goes to the queued request even if another arrives at once."""
    limiter = PriorityLimiter(LIMITS, queues=QUEUES)
    limiter.in_flight = 4
    queued = asyncio.create_task(limiter.acquire(Priority.normal))
    await asyncio.sleep(0)
    limiter.release()  # slot 4 handed to the waiter, in-flight back at 4
    assert limiter.in_flight == 4
    assert limiter.try_acquire(Priority.normal) is False
    await queued


async def test_a_lower_class_waits_behind_a_queued_higher_one() -> None:
    """Below its own limit, low is still not admitted while a higher class waits."""
    limiter = PriorityLimiter(PriorityLimits(low=3, normal=3, hard_cap=3), queues=QUEUES)
    limiter.in_flight = 3
    queued = asyncio.create_task(limiter.acquire(Priority.high))
    await asyncio.sleep(0)
    limiter.in_flight = 1  # two requests ended without handing over (as in a test)
    assert limiter.try_acquire(Priority.low) is False
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)


async def test_queued_request_past_its_deadline_is_answered_without_the_work() -> None:
    """A queued request whose deadline comes first gets DeadlineExceeded, not a slot."""
    limiter = PriorityLimiter(LIMITS, queues=QueueLimits(normal=4, max_wait_s=60.0))
    limiter.in_flight = 4
    deadline = Deadline.after_ms(20, limiter.clock())
    with pytest.raises(DeadlineExceeded, match="deadline passed while it waited"):
        await limiter.acquire(Priority.normal, deadline)
    assert limiter.expired[Priority.normal] == 1 and limiter.in_flight == 4
    assert limiter.waiting(Priority.normal) == 0


async def test_a_wait_ended_by_the_deadline_is_deadline_exceeded_on_a_lagging_clock() -> None:
    """The deadline ends the wait, and the clock read afterwards is a hair short of it
    (a timer may fire a clock tick early): still DeadlineExceeded, not Overloaded."""
    clock = FakeClock()
    limiter = PriorityLimiter(LIMITS, queues=QueueLimits(normal=4, max_wait_s=60.0), clock=clock)
    limiter.in_flight = 4
    deadline = Deadline.after_ms(20, clock())  # the fake clock never reaches it
    with pytest.raises(DeadlineExceeded):
        await limiter.acquire(Priority.normal, deadline)
    assert limiter.waiting(Priority.normal) == 0 and limiter.in_flight == 4


async def test_arrival_past_the_deadline_is_refused_before_queueing() -> None:
    """A request that arrives with its budget spent is refused at once, even with free slots."""
    clock = FakeClock()
    limiter = PriorityLimiter(LIMITS, queues=QUEUES, clock=clock)
    deadline = Deadline.after_ms(5, clock())
    clock.now += 1
    with pytest.raises(DeadlineExceeded):
        await limiter.acquire(Priority.high, deadline)
    assert limiter.in_flight == 0


async def test_waiting_past_max_wait_sheds() -> None:
    """No slot within the max wait: the queued request is shed (Overloaded), not kept."""
    limiter = PriorityLimiter(LIMITS, queues=QueueLimits(low=4, max_wait_s=0.01))
    limiter.in_flight = 2
    with pytest.raises(Overloaded, match=r"no slot within 0\.01s"):
        await limiter.acquire(Priority.low)
    assert limiter.waiting(Priority.low) == 0 and limiter.shed[Priority.low] == 1


async def test_cancelled_waiter_passes_its_slot_on() -> None:
    """A waiter cancelled after its slot was handed over gives the slot to the next one."""
    limiter = PriorityLimiter(PriorityLimits(1, 1, 1), queues=QUEUES)
    await limiter.acquire(Priority.normal)
    first = asyncio.create_task(limiter.acquire(Priority.normal))
    await asyncio.sleep(0)
    second = asyncio.create_task(limiter.acquire(Priority.normal))
    await asyncio.sleep(0)
    limiter.release()  # handed to `first`, which is cancelled before it resumes
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await second  # got the slot `first` gave back
    assert limiter.in_flight == 1 and limiter.waiting(Priority.normal) == 0


async def test_admit_releases_the_slot_even_when_the_block_fails() -> None:
    """The context manager gives the slot back after success and after an error."""
    limiter = PriorityLimiter(LIMITS)
    async with limiter.admit(Priority.normal):
        assert limiter.in_flight == 1
    with pytest.raises(RuntimeError):
        async with limiter.admit(Priority.normal):
            raise RuntimeError("boom")
    assert limiter.in_flight == 0


async def test_burst_sheds_low_and_serves_high() -> None:
    """A burst of 10 low and 3 high over busy slots: high all admitted, low mostly shed."""
    limiter = PriorityLimiter(LIMITS, queues=QueueLimits(low=2, normal=2, high=2, max_wait_s=0))
    outcomes: dict[Priority, list[bool]] = {Priority.low: [], Priority.high: []}
    for p in [Priority.low] * 10 + [Priority.high] * 3:
        try:
            await limiter.acquire(p)
            outcomes[p].append(True)
        except Overloaded:
            outcomes[p].append(False)
    assert outcomes[Priority.high] == [True] * 3
    assert sum(outcomes[Priority.low]) == 2 and limiter.shed[Priority.low] == 8


def test_release_without_acquire_is_an_error() -> None:
    """Releasing more than acquired is a bug, not a silent negative count."""
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        PriorityLimiter(LIMITS).release()


@pytest.mark.parametrize(("low", "normal", "cap"), [(5, 4, 6), (1, 7, 6), (0, 1, 2)])
def test_limits_must_be_ordered(low: int, normal: int, cap: int) -> None:
    """Limits out of order are rejected with the values in the message."""
    with pytest.raises(ValueError, match=f"got {low}, {normal}, {cap}"):
        PriorityLimits(low, normal, cap)


def test_queue_limits_must_not_be_negative() -> None:
    """A negative queue size or wait is rejected naming the values."""
    with pytest.raises(ValueError, match=r"got -1, 0, 0, 0\.0"):
        QueueLimits(low=-1)
