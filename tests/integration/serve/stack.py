"""Helpers of the serve integration tests: the app on Ray and torn down, features stored in
Redis as the features service writes them, bounded polling."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

import httpx
from ray import serve

from libs.common.clients.redis import RedisFeatureStore, StoredVector, make_redis
from libs.common.definitions import Definitions
from libs.common.features.engine import FeatureValue
from services.serve.main import APP_NAME, deploy
from services.serve.settings import ServeSettings

T = TypeVar("T")


class MakeServeSettings(Protocol):
    """The `serve_settings` and `ray_serve_settings` fixtures."""

    async def __call__(self, tmp: Path, suffix: str, **overrides: Any) -> ServeSettings: ...


class DeployChampion(Protocol):
    """The `deploy_champion` fixture."""

    def __call__(
        self, name: str, *, client_timeout_s: float = ..., **overrides: Any
    ) -> AbstractAsyncContextManager[Deployed]: ...


@overload
async def wait_for(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float = ...,
    interval_s: float = ...,
    what: str = ...,
) -> T: ...
@overload
async def wait_for(
    check: Callable[[], T | None],
    *,
    timeout_s: float = ...,
    interval_s: float = ...,
    what: str = ...,
) -> T: ...
async def wait_for(
    check: Callable[[], object],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.25,
    what: str = "the condition",
) -> object:
    """Poll `check` (plain or async) until it returns something truthy, and return that.

    Args:
        check: what to poll; an async check is awaited.
        timeout_s: how long to poll before giving up.
        interval_s: pause between two checks.
        what: the awaited condition, named in the error.

    Returns:
        The first truthy result.

    Raises:
        TimeoutError: the check stayed falsy for `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s:.0f}s: {what}")
        await asyncio.sleep(interval_s)


def ordinal_values(definitions: Definitions) -> dict[str, FeatureValue]:
    """Values of the first feature view: its i-th feature holds float(i)."""
    view = definitions.feature_views[0]
    return {f.name: float(i) for i, f in enumerate(view.features)}


async def write_vectors(
    redis_url: str,
    definitions: Definitions,
    items: Iterable[tuple[str, Mapping[str, FeatureValue]]],
    *,
    age_s: float = 0.0,
) -> None:
    """Store each (entity, values) as its vector of the first feature view, written now
    and holding values as of `age_s` ago."""
    store = RedisFeatureStore(make_redis(redis_url))
    view = definitions.feature_views[0]
    now = time.time()
    vectors = [(e, StoredVector(dict(v), now - age_s, now)) for e, v in items]
    try:
        await store.write_vectors([(view.name, view.version, e, v) for e, v in vectors])
    finally:
        await store.close()


def known_entity(suffix: str) -> str:
    """The entity with stored features in a module whose entities end in `suffix`."""
    return f"dev-{suffix}"


@asynccontextmanager
async def on_ray(
    settings: ServeSettings, *, timeout_s: float = 180.0, client_timeout_s: float = 30.0
) -> AsyncIterator[httpx.AsyncClient]:
    """The app deployed on `settings.ray_address` until ready, an HTTP client to its
    ingress, and the app deleted on exit (the next module deploys its own)."""
    await asyncio.to_thread(deploy, settings, timeout_s=timeout_s)
    base_url = f"http://127.0.0.1:{settings.serve_port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=client_timeout_s) as http:
            yield http
    finally:
        await asyncio.to_thread(serve.delete, APP_NAME)


@dataclass
class Deployed:
    """A module's deployed app: its settings and definitions, and an HTTP client to it.

    Entity ids carry the module's `suffix`, so modules share Redis without cleanup.
    """

    settings: ServeSettings
    definitions: Definitions
    http: httpx.AsyncClient
    suffix: str

    @property
    def model(self) -> str:
        return self.definitions.models[0].name

    @property
    def view(self) -> str:
        """The first feature view, the one `write_vectors` stores."""
        return self.definitions.feature_views[0].name

    @property
    def known(self) -> str:
        """The entity whose features `deploy_champion` stores."""
        return known_entity(self.suffix)

    @property
    def unknown(self) -> str:
        """An entity without features (cold start)."""
        return f"cold-{self.suffix}"
