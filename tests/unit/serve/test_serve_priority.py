"""The in-replica priority limiter: low is shed first, high flows up to the hard cap."""

from __future__ import annotations

import pytest

from services.serve.core.priority import (
    Priority,
    PriorityLimiter,
    PriorityLimits,
    parse_priority,
)
from services.serve.errors import BadPriority, Overloaded

LIMITS = PriorityLimits(low=2, normal=4, hard_cap=6)


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
    """A class is admitted only while in-flight requests are below its limit."""
    limiter = PriorityLimiter(LIMITS)
    for _ in range(in_flight):
        limiter.in_flight += 1
    assert limiter.try_acquire(priority) is admitted
    assert limiter.in_flight == in_flight + (1 if admitted else 0)
    assert limiter.shed[priority] == (0 if admitted else 1)


def test_burst_sheds_low_and_serves_high() -> None:
    """Under a burst, low stops at its limit while high keeps being admitted."""
    limiter = PriorityLimiter(LIMITS)
    low = sum(limiter.try_acquire(Priority.low) for _ in range(10))
    high = sum(limiter.try_acquire(Priority.high) for _ in range(3))
    assert (low, high) == (2, 3)
    assert limiter.shed[Priority.low] == 8


def test_admit_releases_the_slot_even_when_the_block_fails() -> None:
    """The context manager gives the slot back after success and after an error."""
    limiter = PriorityLimiter(LIMITS)
    with limiter.admit(Priority.normal):
        assert limiter.in_flight == 1
    with pytest.raises(RuntimeError), limiter.admit(Priority.normal):
        raise RuntimeError("boom")
    assert limiter.in_flight == 0


def test_admit_raises_overloaded_with_retry_after() -> None:
    """A shed request raises Overloaded carrying the Retry-After seconds."""
    limiter = PriorityLimiter(LIMITS, retry_after_s=3)
    limiter.in_flight = 2
    with pytest.raises(Overloaded, match="low priority requests are shed above 2") as exc:
        with limiter.admit(Priority.low):
            pass
    assert exc.value.retry_after_s == 3
    assert limiter.in_flight == 2


def test_release_without_acquire_is_an_error() -> None:
    """Releasing more than acquired is a bug, not a silent negative count."""
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        PriorityLimiter(LIMITS).release()


@pytest.mark.parametrize(("low", "normal", "cap"), [(5, 4, 6), (1, 7, 6), (0, 1, 2)])
def test_limits_must_be_ordered(low: int, normal: int, cap: int) -> None:
    """Limits out of order are rejected with the values in the message."""
    with pytest.raises(ValueError, match=f"got {low}, {normal}, {cap}"):
        PriorityLimits(low, normal, cap)
