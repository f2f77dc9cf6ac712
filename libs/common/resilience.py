"""The one resilience policy: a timeout per attempt, retries with backoff and jitter
(tenacity), and a circuit breaker (aiobreaker) around every call to another system.

Use one `Policy` per dependency and process (its breaker is shared by all callers of
that dependency). Breaker state and retries are Prometheus metrics labelled by the
dependency's name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import ParamSpec, TypeVar

from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerListener
from aiobreaker.state import CircuitBreakerState
from aiokafka.errors import KafkaError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from libs.common.errors import DependencyUnavailable
from libs.common.observability.metrics import (
    BREAKER_OPENED,
    BREAKER_STATE,
    CALL_FAILURES,
    RETRIES,
)

P = ParamSpec("P")
T = TypeVar("T")

_STATE_VALUE = {
    CircuitBreakerState.CLOSED: 0,
    CircuitBreakerState.HALF_OPEN: 1,
    CircuitBreakerState.OPEN: 2,
}

# Errors that mean "the other system is not answering right now", as opposed to "this
# input is bad": only these are retried, and only these open a breaker.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    KafkaError,
    RedisConnectionError,
    RedisTimeoutError,
    DependencyUnavailable,
    CircuitBreakerError,
)


def is_transient(exc: BaseException) -> bool:
    """True when `exc` is an outage of a dependency (worth waiting out), not bad input."""
    return isinstance(exc, TRANSIENT)


class _StateMetrics(CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        self._name = name
        BREAKER_STATE.labels(name).set(0)

    def state_change(self, breaker: CircuitBreaker, old: object, new: object) -> None:
        state = getattr(new, "state", new)
        BREAKER_STATE.labels(self._name).set(_STATE_VALUE.get(state, 0))  # type: ignore[call-overload]
        if state is CircuitBreakerState.OPEN:
            BREAKER_OPENED.labels(self._name).inc()


class Policy:
    """Timeout + retries + breaker for one dependency.

    Args:
        name: the dependency ("redis", "kafka", "mlflow", "offline-store"); metric label.
        timeout_s: time allowed for one attempt.
        attempts: attempts per call (1 = no retry); only transient errors are retried.
        fail_max: consecutive failed calls that open the breaker.
        reset_s: how long the breaker stays open before one probe call (half-open).
        max_wait_s: upper bound of one backoff sleep.
    """

    def __init__(
        self,
        name: str,
        *,
        timeout_s: float,
        attempts: int = 3,
        fail_max: int = 5,
        reset_s: float = 10.0,
        max_wait_s: float = 2.0,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.max_wait_s = max_wait_s
        self.breaker = CircuitBreaker(
            fail_max=fail_max,
            timeout_duration=timedelta(seconds=reset_s),
            name=name,
            listeners=[_StateMetrics(name)],
        )
        # Only outages trip the breaker: bad input (a poison record, a validation error,
        # a 4xx from MLflow) is the caller's problem, not the dependency's.
        self.breaker.add_excluded_exception(lambda e: not is_transient(e))

    @property
    def state(self) -> str:
        """closed | half_open | open."""
        return str(self.breaker.current_state.name).lower()

    async def _attempt(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kw: P.kwargs) -> T:
        async def timed() -> T:
            async with asyncio.timeout(self.timeout_s):
                return await fn(*args, **kw)

        return await self.breaker.call_async(timed)  # type: ignore[no-any-return]

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kw: P.kwargs) -> T:
        """Await `fn(*args, **kw)` under the policy.

        Raises:
            DependencyUnavailable: the breaker is open, or every attempt failed with a
                transient error (the cause is chained).
            Exception: a non-transient error of `fn`, at once and unchanged.
        """

        def count_retry(_: RetryCallState) -> None:
            RETRIES.labels(self.name).inc()

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_random_exponential(0.05, self.max_wait_s),
                retry=retry_if_exception(
                    lambda e: is_transient(e) and not isinstance(e, CircuitBreakerError)
                ),
                before_sleep=count_retry,
                reraise=True,
            ):
                with attempt:
                    return await self._attempt(fn, *args, **kw)
        except CircuitBreakerError:
            CALL_FAILURES.labels(self.name).inc()
            raise DependencyUnavailable(self.name, "circuit open") from None
        except Exception as exc:
            if is_transient(exc):
                CALL_FAILURES.labels(self.name).inc()
                raise DependencyUnavailable(self.name, repr(exc)) from exc
            raise
        raise AssertionError("unreachable: tenacity reraises")

    async def call_once(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kw: P.kwargs) -> T:
        """`call` for one attempt (no retry): the breaker and the timeout without
        tenacity's per-call machinery, for request paths (serve's feature reads).

        Raises:
            DependencyUnavailable, Exception: as `call`.
        """
        try:
            return await self._attempt(fn, *args, **kw)
        except CircuitBreakerError:
            CALL_FAILURES.labels(self.name).inc()
            raise DependencyUnavailable(self.name, "circuit open") from None
        except Exception as exc:
            if is_transient(exc):
                CALL_FAILURES.labels(self.name).inc()
                raise DependencyUnavailable(self.name, repr(exc)) from exc
            raise

    async def call_blocking(self, fn: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
        """Run a blocking `fn` in a worker thread under the policy (MLflow, files).

        On timeout the thread cannot be stopped; it finishes in the background and its
        result is discarded.
        """

        async def in_thread() -> T:
            return await asyncio.to_thread(fn, *args, **kw)

        return await self.call(in_thread)
