"""The rate limiter's math (GCRA) and its fail-open rule, without Redis."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from libs.common.ratelimit import Decision, Limit, MemoryRateLimiter, RedisRateLimiter, gcra


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("rate", "burst", "expected"),
    [(10.0, None, 10), (0.5, None, 1), (2.5, None, 3), (10.0, 4, 4)],
)
def test_burst_defaults_to_one_second_of_requests(
    rate: float, burst: int | None, expected: int
) -> None:
    """Without a burst a key may send one second's worth at once (at least 1)."""
    assert Limit.of(rate, burst).burst == expected


def test_rate_must_be_positive() -> None:
    """A zero or negative rate is refused, naming the value."""
    with pytest.raises(ValueError, match="got 0"):
        Limit.of(0)


def test_a_burst_passes_then_one_request_per_interval() -> None:
    """Burst 3 at 2/s: three at once, the fourth waits 0.5 s; then one per 0.5 s."""
    limit = Limit.of(2.0, 3)
    tat: float | None = None
    verdicts = []
    for _ in range(4):
        decision, new_tat = gcra(tat, 10.0, limit)
        verdicts.append(decision)
        tat = new_tat if new_tat is not None else tat
    assert [d.allowed for d in verdicts] == [True, True, True, False]
    assert [d.remaining for d in verdicts[:3]] == [2, 1, 0]
    assert verdicts[3].retry_after_s == pytest.approx(0.5)
    # A refusal changes nothing; after the wait exactly one more passes.
    assert gcra(tat, 10.49, limit)[0].allowed is False
    decision, tat = gcra(tat, 10.5, limit)
    assert decision.allowed and decision.remaining == 0
    assert gcra(tat, 10.5, limit)[0].allowed is False


def test_idle_time_refills_up_to_the_burst_only() -> None:
    """After a long pause a key gets its burst back, never more."""
    limit = Limit.of(1.0, 2)
    _, tat = gcra(None, 0.0, limit)
    _, tat = gcra(tat, 0.0, limit)
    allowed = 0
    for _ in range(5):
        decision, new_tat = gcra(tat, 3600.0, limit)
        if decision.allowed:
            allowed += 1
            tat = new_tat
    assert allowed == 2


def test_sustained_rate_is_the_configured_rate() -> None:
    """Offered 10/s for 10 s against 4/s burst 4: about 4/s + the burst get through."""
    limit = Limit.of(4.0, 4)
    tat: float | None = None
    passed = 0
    for i in range(100):
        decision, new_tat = gcra(tat, i * 0.1, limit)
        if decision.allowed:
            passed += 1
            tat = new_tat
    assert passed == 4 + 40 - 1  # the burst, then one per 0.25 s over 9.9 s


def test_retry_after_header_rounds_up() -> None:
    """Retry-After is whole seconds, rounded up, at least 1."""
    assert Decision(False, retry_after_s=0.01).retry_after_header == "1"
    assert Decision(False, retry_after_s=1.2).retry_after_header == "2"


async def test_memory_limiter_keeps_keys_apart() -> None:
    """One key's refusals do not touch another's allowance."""
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    limit = Limit.of(1.0, 1)
    assert (await limiter.acquire("a", limit)).allowed
    assert not (await limiter.acquire("a", limit)).allowed
    assert (await limiter.acquire("b", limit)).allowed
    clock.now += 1.0
    assert (await limiter.acquire("a", limit)).allowed


class _DownRedis:
    """A redis client whose script calls fail as when the server is unreachable."""

    def register_script(self, _script: str) -> Any:
        async def call(**_kw: Any) -> Any:
            raise RedisConnectionError("connection refused")

        return call

    async def aclose(self) -> None:
        return None


async def test_redis_down_fails_open_and_counts() -> None:
    """Serving beats limiting: with Redis down every request passes, each counted."""
    limiter = RedisRateLimiter(_DownRedis(), timeout_s=0.05)  # type: ignore[arg-type]
    decisions = [await limiter.acquire("k", Limit.of(1.0, 1)) for _ in range(7)]
    assert all(d.allowed and d.failed_open for d in decisions)
    assert limiter.failed_open == 7
    assert limiter.state == "open"  # after 5 failures the breaker skips Redis entirely
