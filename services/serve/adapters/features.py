"""Online-store reads for the request path: a time budget and a circuit breaker.

When Redis is slow or down, requests must get the fallback quickly instead of each
waiting out its own timeouts; the breaker (aiobreaker) fails them at once while open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from libs.common.clients.redis.base import FeatureStore, StoredVector
from libs.common.errors import DependencyUnavailable
from libs.common.observability.logging import get_logger
from libs.common.resilience import Policy
from services.serve.errors import FeatureStoreUnavailable

log = get_logger(__name__)
# How old the replica's view of which polled sources are stale may be (issue 9).
STALE_REFRESH_S = 1.0


class GuardedFeatureReader:
    """`read_vectors` of a FeatureStore with a timeout, behind a circuit breaker."""

    def __init__(
        self, store: FeatureStore, *, timeout_s: float, fail_max: int, reset_s: float
    ) -> None:
        self._store = store
        self._timeout_s = timeout_s
        self._stale: dict[str, float] = {}
        self._stale_read_at = -STALE_REFRESH_S
        # One attempt: the request's own budget has no room for a retry; the breaker
        # makes the following requests fail fast while Redis is down.
        self.policy = Policy(
            "redis", timeout_s=timeout_s, attempts=1, fail_max=fail_max, reset_s=reset_s
        )

    async def read(
        self, views: Sequence[tuple[str, int]], entity_ids: Sequence[str]
    ) -> list[dict[str, StoredVector]]:
        """One round trip for all entities and views.

        Raises:
            FeatureStoreUnavailable: the read failed or timed out, or the breaker is open.
        """
        try:
            return await self.policy.call_once(self._store.read_vectors, views, entity_ids)
        except DependencyUnavailable as exc:
            raise FeatureStoreUnavailable(f"feature store unavailable: {exc.detail}") from None
        except Exception as exc:
            log.warning("feature_read_failed", error=repr(exc), entities=len(entity_ids))
            raise FeatureStoreUnavailable(f"feature store read failed: {exc!r}") from exc

    async def stale_sources(self) -> dict[str, float]:
        """Sources re-emitted from a cached snapshot now (source -> snapshot time), read
        from the store at most every STALE_REFRESH_S; never fails a request: when the
        store does not answer, the last known answer stands.
        """
        now = time.monotonic()
        if now - self._stale_read_at < STALE_REFRESH_S:
            return self._stale
        self._stale_read_at = now  # concurrent requests meanwhile take the last answer
        try:
            self._stale = await self.policy.call_once(self._store.stale_sources)
        except Exception as exc:
            log.warning("stale_sources_unread", error=repr(exc))
        return self._stale

    @property
    def state(self) -> str:
        return self.policy.state

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                return await self._store.ping()
        except Exception:
            return False

    async def close(self) -> None:
        await self._store.close()
