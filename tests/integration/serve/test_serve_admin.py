"""Admin API and edge security over real HTTP, MLflow, Kafka and Redis (no Ray).

Serve's and ingest's apps run under uvicorn on loopback ports in background threads
(the CLI needs a listening server); the session's broker, Redis and MLflow are real.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from typer.testing import CliRunner

from infra.cli import app as cli
from libs.common.clients.kafka.reader import read_to_end
from libs.common.clients.redis import make_redis
from libs.common.definitions import Definitions, load_definitions
from libs.common.net import free_port
from libs.common.ratelimit import RedisRateLimiter
from libs.common.registry import MlflowRegistry
from libs.common.schemas import DeadLetter, ModelChanged, RetrainModel
from libs.common.settings import Settings
from libs.common.testing import paused
from services.ingest.main import build_app as build_ingest
from services.ingest.settings import IngestSettings
from services.serve.app import build_service, create_app
from services.serve.settings import ServeSettings
from tests.integration.serve.stack import MakeServeSettings, wait_for

pytestmark = pytest.mark.integration

TOKEN = "admin-token-for-admin-tests"
PREDICT_KEY = "predict-key-for-admin-tests"
OPS_KEY = "ops-key-for-admin-tests"
LIMITED_KEY = "limited-key-for-admin-tests"
KEYS: dict[str, Any] = {
    "app": {"key": PREDICT_KEY, "scopes": ["predict"]},
    "ops": {"key": OPS_KEY, "scopes": ["admin"]},
    "slow": {"key": LIMITED_KEY, "scopes": ["predict"], "rate_per_s": 0.5, "burst": 3},
}


@contextmanager
def serving(app: FastAPI, port: int) -> Iterator[str]:
    """Run `app` (with its lifespan) under uvicorn on 127.0.0.1:`port` in a thread."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the app did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


async def events_on(bootstrap: str, topic: str) -> list[ModelChanged]:
    return [ModelChanged.from_bytes(d.value) for d in await read_to_end(bootstrap, topic)]


@dataclass
class Stack:
    serve: ServeSettings
    ingest: IngestSettings
    definitions: Definitions
    registry: MlflowRegistry
    serve_url: str
    ingest_url: str

    @property
    def model(self) -> str:
        return self.definitions.models[0].name


@pytest.fixture(scope="module", name="stack")
async def _stack(
    serve_settings: MakeServeSettings,
    redis_url: str,
    mlflow_uri: str,
    train,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """Champion v1 and a registered v2 in MLflow; serve and ingest listening."""
    suffix = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("admin")
    serve = await serve_settings(
        tmp,
        suffix,
        kafka_partitions=1,
        admin_token=TOKEN,
        api_keys=KEYS,
        serve_port=free_port(),
        ingest_port=free_port(),
        registry_poll_s=0,
    )
    # Ingest on serve's broker, topics, Redis, ports and keys: attributes, not a dump,
    # since dumps leave the API keys out.
    shared = {name: getattr(serve, name) for name in Settings.model_fields}
    ingest = IngestSettings(**shared, consumer_group=f"ingest-{suffix}")
    definitions = load_definitions(serve.definitions)
    registry = MlflowRegistry(mlflow_uri, str(tmp / "artifacts"))
    model = definitions.models[0]
    v1 = registry.register(model.name, train(model, 1), params={}, metrics={"auc": 0.6}, tags={})
    registry.promote(model.name, v1)
    registry.register(model.name, train(model, 2), params={}, metrics={"auc": 0.7}, tags={})

    serve_app = create_app(
        build_service(serve),
        manage_lifecycle=True,
        rate_limiter=RedisRateLimiter(make_redis(redis_url), prefix=f"rl:{suffix}:"),
    )
    with (
        serving(serve_app, serve.serve_port) as serve_url,
        serving(build_ingest(ingest), ingest.ingest_port) as ingest_url,
    ):
        yield Stack(serve, ingest, definitions, registry, serve_url, ingest_url)


def admin_calls(model: str) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """Every admin endpoint: (service, method, path, a body it accepts)."""
    return [
        ("serve", "POST", f"/v1/admin/models/{model}/promote", {"version": "2"}),
        ("serve", "POST", f"/v1/admin/models/{model}/rollback", {}),
        ("serve", "PUT", f"/v1/admin/models/{model}/traffic", {"challenger_fraction": 0.5}),
        ("serve", "POST", "/v1/admin/reload", None),
        ("serve", "POST", "/v1/admin/retrain", {"model": model}),
        ("ingest", "POST", "/v1/admin/dlq/replay", {}),
        ("ingest", "GET", "/v1/admin/dlq", None),
    ]


async def test_every_admin_endpoint_needs_a_key_with_the_admin_scope(stack: Stack) -> None:
    """401 (with WWW-Authenticate) without a key or with an unknown one, 403 with a
    predict-only key, on serve's and ingest's admin endpoints; nothing moves."""
    async with httpx.AsyncClient(timeout=30) as http:
        for service, method, path, body in admin_calls(stack.model):
            url = (stack.serve_url if service == "serve" else stack.ingest_url) + path
            none = await http.request(method, url, json=body)
            assert none.status_code == 401, (path, none.text)
            assert none.headers["WWW-Authenticate"] == "Bearer"
            unknown = await http.request(method, url, json=body, headers={"X-API-Key": "x" * 20})
            assert unknown.status_code == 401, (path, unknown.text)
            wrong = await http.request(
                method, url, json=body, headers={"Authorization": f"Bearer {PREDICT_KEY}"}
            )
            assert wrong.status_code == 403, (path, wrong.text)
            assert "lacks the 'admin' scope" in wrong.json()["message"]
    assert stack.registry.version_of(stack.model, "champion") == "1"
    assert await events_on(stack.serve.kafka_bootstrap, stack.serve.topics.models) == []


async def test_promote_and_rollback_over_http_move_the_alias_and_announce_it(
    stack: Stack,
) -> None:
    """Promote v2 then roll back with the admin key: the champion alias moves in MLflow,
    ModelChanged events go out, and serve answers with the new champion at once."""
    admin = {"Authorization": f"Bearer {OPS_KEY}"}
    models_topic = stack.serve.topics.models
    async with httpx.AsyncClient(base_url=stack.serve_url, timeout=60) as http:
        r = await http.post(
            f"/v1/admin/models/{stack.model}/promote", json={"version": "2"}, headers=admin
        )
        assert r.status_code == 200, r.text
        assert (r.json()["version"], r.json()["previous"]) == ("2", "1")
        assert stack.registry.version_of(stack.model, "champion") == "2"
        answer = (await http.post("/v1/predict", json={"entity_id": "e1"})).json()
        assert answer["model"]["version"] == "2"

        r = await http.post(f"/v1/admin/models/{stack.model}/rollback", headers=admin)
        assert r.status_code == 200, r.text
        assert (r.json()["version"], r.json()["previous"]) == ("1", "2")
        assert stack.registry.version_of(stack.model, "champion") == "1"

        # A version the registry does not hold is a 404 naming it; nothing moves.
        r = await http.post(
            f"/v1/admin/models/{stack.model}/promote", json={"version": "99"}, headers=admin
        )
        assert r.status_code == 404 and "'99'" in r.json()["message"]

    events = await wait_for(
        lambda: _kinds(stack.serve.kafka_bootstrap, models_topic, {"promoted", "rolled_back"})
    )
    assert [(e.kind, e.version, e.alias) for e in events] == [
        ("promoted", "2", "champion"),
        ("rolled_back", "1", "champion"),
    ]
    assert events[0].metrics["auc"] == pytest.approx(0.7)


async def _kinds(bootstrap: str, topic: str, kinds: set[str]) -> list[ModelChanged]:
    events = [e for e in await events_on(bootstrap, topic) if e.kind in kinds]
    return events if len(events) >= len(kinds) else []


async def test_rate_limit_is_shared_by_two_app_instances(
    stack: Stack, redis_url: str, redis_server
) -> None:
    """A key limited to burst 3 gets three answers across two apps, then 429 from either;
    with Redis paused the limiter fails open and counts it."""
    service = build_service(stack.serve)  # not started: answers with the fallback
    prefix = f"rl:shared:{uuid.uuid4().hex[:8]}:"
    apps = [
        create_app(service, rate_limiter=RedisRateLimiter(make_redis(redis_url), prefix=prefix))
        for _ in range(2)
    ]
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://serve")
        for a in apps
    ]
    limited = {"Authorization": f"Bearer {LIMITED_KEY}"}
    try:
        codes = [
            (await clients[i % 2].post("/v1/predict", json={"entity_id": "e"}, headers=limited))
            for i in range(5)
        ]
        assert [c.status_code for c in codes] == [200, 200, 200, 429, 429]
        assert codes[3].headers["Retry-After"] == "2"  # one request per 2 s at 0.5/s
        assert codes[3].json()["error"] == "rate_limited"
        # Another key is not limited by this one.
        other = await clients[0].post(
            "/v1/predict", json={"entity_id": "e"}, headers={"X-API-Key": PREDICT_KEY}
        )
        assert other.status_code == 200
        # Redis stops answering: requests pass (fail open) and are counted.
        with paused(redis_server.pid):
            passed = await clients[1].post("/v1/predict", json={"entity_id": "e"}, headers=limited)
        assert passed.status_code == 200
        assert service.counts["rate_limit_failed_open"] >= 1
    finally:
        for c in clients:
            await c.aclose()
        await service.reader.close()


def _cli(monkeypatch: pytest.MonkeyPatch, stack: Stack, *args: str, key: str | None = None) -> Any:
    monkeypatch.setenv("SIGNALOPS_SERVE_PORT", str(stack.serve.serve_port))
    monkeypatch.setenv("SIGNALOPS_INGEST_PORT", str(stack.ingest.ingest_port))
    monkeypatch.setenv("SIGNALOPS_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("COLUMNS", "200")
    if key is not None:
        monkeypatch.setenv("SIGNALOPS_API_KEY", key)
    else:
        monkeypatch.delenv("SIGNALOPS_API_KEY", raising=False)
    return CliRunner().invoke(cli, list(args))


async def test_cli_calls_the_admin_endpoints(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """`signalops models promote|traffic|rollback` and `retrain` go through serve's admin
    API with the admin token or SIGNALOPS_API_KEY, and print clear refusals."""
    run = lambda *a, **kw: asyncio.to_thread(_cli, monkeypatch, stack, *a, **kw)  # noqa: E731
    promoted = await run("models", "promote", stack.model, "2")
    assert promoted.exit_code == 0, promoted.output
    assert f"{stack.model} version 2 is champion (was 1)" in promoted.output
    assert stack.registry.version_of(stack.model, "champion") == "2"

    traffic = await run(
        "models", "traffic", stack.model, "--challenger-fraction", "0.3", "--shadow", key=OPS_KEY
    )
    assert traffic.exit_code == 0, traffic.output
    assert "challenger fraction 0.3, shadow on" in traffic.output

    retrain = await run("retrain", "--model", stack.model, "--reason", "cli test")
    assert retrain.exit_code == 0, retrain.output
    requests = [
        RetrainModel.from_bytes(d.value)
        for d in await read_to_end(stack.serve.kafka_bootstrap, stack.serve.topics.retrain)
    ]
    assert [(r.model, r.reason, r.requested_by) for r in requests] == [
        (stack.model, "cli test", "api:admin")
    ]

    rolled = await run("models", "rollback", stack.model)
    assert rolled.exit_code == 0, rolled.output
    assert stack.registry.version_of(stack.model, "champion") == "1"

    refused = await run("models", "promote", stack.model, "2", key=PREDICT_KEY)
    assert refused.exit_code == 1
    assert "403" in refused.output and "lacks the admin scope" in refused.output
    assert stack.registry.version_of(stack.model, "champion") == "1"
    unknown = await run("models", "rollback", stack.model, key="not-a-key-at-all-0000")
    assert unknown.exit_code == 1 and "SIGNALOPS_API_KEY" in unknown.output


async def test_cli_reports_an_unreachable_service(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listening: exit 1 and a message naming where it looked, no traceback."""
    monkeypatch.setenv("SIGNALOPS_SERVE_PORT", str(free_port()))
    monkeypatch.setenv("COLUMNS", "200")
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["models", "rollback", "x"])
    assert result.exit_code == 1
    assert "serve does not answer at http://127.0.0.1:" in result.output
    assert "Traceback" not in result.output


async def test_dlq_replay_through_ingest_admin_endpoint(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad signal posted to ingest is dead-lettered; `signalops dlq replay --reason`
    sends its original bytes back to the raw topic through ingest's admin API."""
    original = b'{"source": "nope", "entity_id": "d1", "event_time": "2026-11-22T10:00:00Z"}'
    async with httpx.AsyncClient(base_url=stack.ingest_url, timeout=30) as http:
        r = await http.post("/v1/signals", content=original)
        assert r.status_code == 422, r.text
        reason = r.json()["rejected"][0]["reason"]
    topics = stack.ingest.topics
    await wait_for(lambda: read_to_end(stack.ingest.kafka_bootstrap, topics.dlq))

    result = await asyncio.to_thread(
        _cli, monkeypatch, stack, "dlq", "replay", "--reason", reason, key=OPS_KEY
    )
    assert result.exit_code == 0, result.output
    assert f"replayed 1 to {topics.raw}, 0 outcomes accepted, 0 rejected again, 0 skipped" in (
        result.output
    )
    raw = await read_to_end(stack.ingest.kafka_bootstrap, topics.raw)
    assert [d.value for d in raw] == [original]
    # Ingest consumed it again and dead-lettered it again, with the same reason.
    letters = await wait_for(
        lambda: _at_least(2, stack.ingest.kafka_bootstrap, topics.dlq), timeout_s=30
    )
    assert {DeadLetter.from_bytes(b).reason for b in letters} == {reason}


async def _at_least(n: int, bootstrap: str, topic: str) -> list[bytes]:
    values = [d.value for d in await read_to_end(bootstrap, topic)]
    return values if len(values) >= n else []
