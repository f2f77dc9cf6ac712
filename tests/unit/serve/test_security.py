"""Edge security of serve: API keys with scopes, 401/403/429, body limits, no key in logs."""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from libs.common.http import BodySizeLimit
from libs.common.ratelimit import MemoryRateLimiter
from libs.common.registry import AliasMove
from libs.common.schemas import Message
from libs.common.security import (
    KeyRing,
    KeysFileInvalid,
    ScopeMissing,
    Unauthenticated,
    presented_key,
)
from libs.common.settings import Settings
from services.serve.app import create_app
from services.serve.settings import ServeSettings, settings_payload

PREDICT_KEY = "predict-key-0123456789"
ADMIN_ONLY_KEY = "admin-only-key-0123456789"
LIMITED_KEY = "limited-key-0123456789"
KEYS: dict[str, Any] = {
    "app": {"key": PREDICT_KEY, "scopes": ["predict"]},
    "ops": {"key": ADMIN_ONLY_KEY, "scopes": ["admin"]},
    "slow": {"key": LIMITED_KEY, "scopes": ["predict"], "rate_per_s": 1, "burst": 2},
}

# Every admin endpoint with a body it accepts: (method, path, json).
ADMIN_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/admin/models/default/promote", {"version": "2"}),
    ("POST", "/v1/admin/models/default/rollback", {}),
    ("PUT", "/v1/admin/models/default/traffic", {"challenger_fraction": 0.2, "shadow": True}),
    ("POST", "/v1/admin/reload", None),
    ("POST", "/v1/admin/retrain", {"model": "default", "reason": "test"}),
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class RecordingPublisher:
    """Admin publisher fake: keeps (topic, message, key)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Message, str | None]] = []

    async def publish(self, topic: str, message: Message, *, key: str | None = None) -> None:
        self.sent.append((topic, message, key))

    async def stop(self) -> None:
        return None


class AliasRegistry:
    """Registry fake over the harness's MemoryModelSource: moves its champion alias."""

    def __init__(self, models: Any) -> None:
        self.models = models
        self.previous: dict[str, str] = {}

    def promote(self, model: str, version: str) -> AliasMove:
        if (model, version) not in self.models.boosters:
            raise _NotFound()
        before = self.models.version_of(model, "champion")
        if before is not None and before != version:
            self.previous[model] = before
        self.models.aliases[(model, "champion")] = version
        return AliasMove(model, version, before, {"auc": 0.7})

    def rollback(self, model: str) -> AliasMove:
        from libs.common.errors import RollbackUnavailable

        if model not in self.previous:
            raise RollbackUnavailable(f"model {model!r} has no previous champion")
        before = self.models.version_of(model, "champion")
        self.models.aliases[(model, "champion")] = self.previous.pop(model)
        return AliasMove(model, self.models.aliases[(model, "champion")], before, {})


class _NotFound(Exception):
    error_code = "RESOURCE_DOES_NOT_EXIST"


@pytest.fixture(name="secured")
async def _secured(make_harness, train):  # type: ignore[no-untyped-def]
    """Factory: the harness's service behind an app with KEYS, fake registry and publisher."""
    clients: list[httpx.AsyncClient] = []

    async def make(**overrides: Any) -> tuple[Any, httpx.AsyncClient, RecordingPublisher]:
        h = await make_harness(api_keys=KEYS, **overrides)
        h.models.register("default", "2", train(h.definitions.model("default"), seed=2), alias=None)
        publisher = RecordingPublisher()
        app = create_app(
            h.service,
            rate_limiter=MemoryRateLimiter(clock=lambda: 1000.0),  # frozen: no refill
            registry=lambda: AliasRegistry(h.models),
            publisher=publisher,
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve")
        clients.append(client)
        return h, client, publisher

    yield make
    for c in clients:
        await c.aclose()


# ---- keys and scopes (pure) -------------------------------------------------------


def test_admin_token_is_a_key_with_every_scope() -> None:
    """SIGNALOPS_ADMIN_TOKEN stays valid: the key named "admin", predict and admin scopes."""
    ring = KeyRing.from_settings(Settings(admin_token="tok-" + "x" * 20))
    who = ring.identify("tok-" + "x" * 20)
    assert who is not None and who.name == "admin" and who.scopes == {"predict", "admin"}
    assert ring.identify("tok-" + "x" * 19) is None


def test_keys_from_environment_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGNALOPS_API_KEYS holds JSON {name: {key, scopes, rate_per_s, burst}}."""
    monkeypatch.setenv("SIGNALOPS_API_KEYS", json.dumps(KEYS))
    ring = KeyRing.from_settings(Settings())
    assert sorted(ring.names) == ["admin", "app", "ops", "slow"]
    slow = ring.identify(LIMITED_KEY)
    assert slow is not None and (slow.rate_per_s, slow.burst) == (1.0, 2)
    assert ring.identify(ADMIN_ONLY_KEY).scopes == {"admin"}  # type: ignore[union-attr]


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_keys_from_a_secrets_file(tmp_path: Path, suffix: str) -> None:
    """A mounted secrets file (YAML or JSON) adds keys to those of the environment."""
    path = tmp_path / f"keys.{suffix}"
    doc = {"batch": {"key": "file-key-0123456789", "scopes": ["predict", "admin"]}}
    path.write_text(
        json.dumps(doc)
        if suffix == "json"
        else "batch:\n  key: file-key-0123456789\n  scopes: [predict, admin]\n"
    )
    ring = KeyRing.from_settings(Settings(api_keys_file=path, api_keys=KEYS))
    who = ring.identify("file-key-0123456789")
    assert who is not None and who.name == "batch" and who.scopes == {"predict", "admin"}
    assert ring.identify(PREDICT_KEY) is not None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("app: {key: short}", "at least 16"),
        ("app: {key: long-enough-secret-123, scopes: [root]}", "scopes"),
        ("[not, a, mapping]", "expected"),
        ("app: {key: [unclosed", "cannot read"),
    ],
)
def test_bad_keys_file_names_the_file(tmp_path: Path, content: str, match: str) -> None:
    """A malformed file fails at start, naming the file and what is wrong."""
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    with pytest.raises(KeysFileInvalid, match=match) as info:
        KeyRing.from_settings(Settings(api_keys_file=path))
    assert str(path) in str(info.value)


def test_reserved_and_shared_secrets_are_refused() -> None:
    """ "admin" is the admin token's name; two names with one secret are ambiguous."""
    with pytest.raises(KeysFileInvalid, match="reserved"):
        KeyRing.from_settings(Settings(api_keys={"admin": {"key": "x" * 16}}))
    twice = {"a": {"key": "same-secret-0123456"}, "b": {"key": "same-secret-0123456"}}
    with pytest.raises(KeysFileInvalid, match="share one secret"):
        KeyRing.from_settings(Settings(api_keys=twice))


def test_every_key_is_compared_without_early_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whichever key matches (first, last, none), every known digest is compared once."""
    ring = KeyRing.from_settings(Settings(api_keys=KEYS))
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented in ("dev-admin-token", LIMITED_KEY, "nobody-has-this-key"):
        calls.clear()
        ring.identify(presented)
        assert len(calls) == len(ring.names) == 4


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer  abc "}, "abc"),
        ({"x-api-key": "abc"}, "abc"),
        ({"authorization": "Basic abc"}, None),
        ({"authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], key: str | None) -> None:
    """Bearer (any case) or X-API-Key; another scheme or an empty bearer is no key."""
    assert presented_key(headers) == key


def test_authenticate_tells_401_from_403() -> None:
    """No or unknown key: Unauthenticated (401); a known key without the scope: 403."""
    ring = KeyRing.from_settings(Settings(api_keys=KEYS))
    with pytest.raises(Unauthenticated, match="'admin' scope"):
        ring.authenticate({}, "admin")
    with pytest.raises(Unauthenticated, match="not valid"):
        ring.authenticate({"authorization": "Bearer wrong-key-0123456789"}, "admin")
    with pytest.raises(ScopeMissing, match="'app' lacks the 'admin' scope"):
        ring.authenticate({"authorization": f"Bearer {PREDICT_KEY}"}, "admin")
    assert ring.authenticate({"x-api-key": ADMIN_ONLY_KEY}, "admin").name == "ops"


def test_predict_key_required_follows_the_environment() -> None:
    """Keyless predictions in development only, unless configured either way."""
    assert Settings().predict_key_required is False
    assert Settings(environment="production", admin_token="x" * 16).predict_key_required
    assert Settings(require_predict_key=True).predict_key_required
    prod_open = Settings(environment="production", admin_token="x" * 16, require_predict_key=False)
    assert prod_open.predict_key_required is False


def test_keys_never_travel_in_settings_dumps() -> None:
    """API keys are excluded from dumps, so Serve's deployment arguments never hold them."""
    s = ServeSettings(api_keys=KEYS, api_key="cli-key-0123456789")
    dumped = json.dumps(settings_payload(s)) + s.model_dump_json() + repr(s)
    for secret in (PREDICT_KEY, ADMIN_ONLY_KEY, LIMITED_KEY, "cli-key-0123456789"):
        assert secret not in dumped
    with pytest.raises(ValidationError):
        Settings(api_keys={"x": {"key": "x" * 16, "scopes": []}})


# ---- over HTTP (create_app with fakes) -------------------------------------------


async def test_predict_is_open_in_development_but_checks_a_presented_key(secured) -> None:
    """Keyless predict works in development; a presented key is still checked."""
    _, client, _ = await secured()
    assert (await client.post("/v1/predict", json={"entity_id": "e"})).status_code == 200
    ok = await client.post("/v1/predict", json={"entity_id": "e"}, headers=bearer(PREDICT_KEY))
    assert ok.status_code == 200
    bad = await client.post("/v1/predict", json={"entity_id": "e"}, headers=bearer("nope" * 5))
    assert bad.status_code == 401 and bad.headers["WWW-Authenticate"] == "Bearer"
    admin_only = await client.post(
        "/v1/predict", json={"entity_id": "e"}, headers={"X-API-Key": ADMIN_ONLY_KEY}
    )
    assert admin_only.status_code == 403 and admin_only.json()["error"] == "forbidden"


async def test_predict_and_features_need_a_key_when_required(secured) -> None:
    """With require_predict_key, predict, batch and features answer 401 without a key."""
    _, client, _ = await secured(require_predict_key=True)
    calls = [
        ("POST", "/v1/predict", {"entity_id": "e"}),
        ("POST", "/v1/predict/batch", {"requests": [{"entity_id": "e"}]}),
        ("POST", "/v1/features/batch", {"entity_ids": ["e"]}),
        ("GET", "/v1/features/e", None),
    ]
    for method, path, body in calls:
        r = await client.request(method, path, json=body)
        assert r.status_code == 401, (path, r.text)
        assert "predict" in r.json()["message"]
        r = await client.request(method, path, json=body, headers=bearer(PREDICT_KEY))
        assert r.status_code in (200, 404), (path, r.text)  # 404: no features stored for e


async def test_every_admin_endpoint_refuses_missing_unknown_and_wrong_scope_keys(
    secured,
) -> None:
    """401 without a key or with an unknown one, 403 with a predict-only key."""
    _, client, publisher = await secured()
    for method, path, body in ADMIN_CALLS:
        none = await client.request(method, path, json=body)
        assert none.status_code == 401 and none.headers["WWW-Authenticate"] == "Bearer", path
        unknown = await client.request(method, path, json=body, headers=bearer("x" * 20))
        assert unknown.status_code == 401 and unknown.json()["error"] == "unauthorized", path
        scope = await client.request(method, path, json=body, headers=bearer(PREDICT_KEY))
        assert scope.status_code == 403 and "lacks the 'admin' scope" in scope.json()["message"]
    assert publisher.sent == []


async def test_admin_actions_move_the_champion_and_publish_events(secured) -> None:
    """Promote, rollback, traffic and retrain with an admin key: effects and messages."""
    h, client, publisher = await secured()
    admin = {"X-API-Key": ADMIN_ONLY_KEY}
    topics = h.service.settings.topics
    # Promote v2: the alias moves, this replica serves it, a "promoted" event goes out.
    r = await client.post("/v1/admin/models/default/promote", json={"version": "2"}, headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["previous"]) == ("2", "1")
    assert h.service.catalog.slot("default").champion.version == "2"
    # An unknown version is a 404 that names it; an unknown model a 404 too.
    r = await client.post("/v1/admin/models/default/promote", json={"version": "9"}, headers=admin)
    assert r.status_code == 404 and "'9'" in r.json()["message"]
    r = await client.post("/v1/admin/models/nope/promote", json={"version": "1"}, headers=admin)
    assert r.status_code == 404 and r.json()["error"] == "unknown_model"
    # Rollback: back to v1; a second rollback has nothing to go back to (409).
    r = await client.post("/v1/admin/models/default/rollback", headers=admin)
    assert r.status_code == 200 and r.json()["version"] == "1"
    r = await client.post("/v1/admin/models/default/rollback", headers=admin)
    assert r.status_code == 409 and r.json()["error"] == "rollback_unavailable"
    # Traffic and retrain.
    r = await client.put(
        "/v1/admin/models/default/traffic",
        json={"challenger_fraction": 0.25, "shadow": True},
        headers=admin,
    )
    assert r.status_code == 200 and r.json()["challenger_fraction"]["default"] == 0.25
    r = await client.put(
        "/v1/admin/models/default/traffic", json={"challenger_fraction": 2}, headers=admin
    )
    assert r.status_code == 422
    r = await client.post("/v1/admin/retrain", json={"model": "default"}, headers=admin)
    assert r.status_code == 202
    kinds = [(t, getattr(m, "kind", type(m).__name__), k) for t, m, k in publisher.sent]
    assert kinds == [
        (topics.models, "promoted", "default"),
        (topics.models, "rolled_back", "default"),
        (topics.models, "traffic_changed", "default"),
        (topics.retrain, "RetrainModel", "default"),
    ]
    assert publisher.sent[-1][1].requested_by == "api:ops"  # type: ignore[attr-defined]
    assert publisher.sent[2][1].metrics == {"challenger_fraction": 0.25, "shadow": 1.0}  # type: ignore[attr-defined]


async def test_rate_limited_key_gets_429_with_retry_after(secured) -> None:
    """A key limited to 1/s with burst 2 gets two answers, then 429; other keys are not
    affected."""
    _, client, _ = await secured()
    answers = [
        await client.post("/v1/predict", json={"entity_id": "e"}, headers=bearer(LIMITED_KEY))
        for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].headers["Retry-After"] == "1"
    assert "1 requests/s" in answers[2].json()["message"]
    other = await client.post("/v1/predict", json={"entity_id": "e"}, headers=bearer(PREDICT_KEY))
    assert other.status_code == 200


async def test_no_key_or_payload_in_logs(secured, caplog: pytest.LogCaptureFixture) -> None:
    """Admin actions log the key's name; no key, refused or accepted, reaches a log line."""
    caplog.set_level(logging.DEBUG)
    _, client, _ = await secured()
    with capture_logs() as events:
        await client.post("/v1/admin/reload", headers=bearer(ADMIN_ONLY_KEY))
        await client.post("/v1/admin/reload", headers=bearer(PREDICT_KEY))
        await client.post("/v1/admin/reload", headers=bearer("unknown-key-0123456789"))
        await client.post(
            "/v1/predict", json={"entity_id": "secret-entity-42"}, headers=bearer(LIMITED_KEY)
        )
    text = json.dumps(events, default=str) + caplog.text
    assert {"event": "admin_action", "action": "reload", "key": "ops"}.items() <= next(
        e for e in events if e["event"] == "admin_action"
    ).items()
    for secret in (ADMIN_ONLY_KEY, PREDICT_KEY, LIMITED_KEY, "unknown-key-0123456789"):
        assert secret not in text
    assert "secret-entity-42" not in text


# ---- body size limit (pure ASGI) -------------------------------------------------


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


async def test_body_limit_refuses_declared_and_streamed_bodies() -> None:
    """Over the limit: 413 whether Content-Length says so or a chunked stream passes it;
    at the limit the app gets the whole body."""
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=BodySizeLimit(_echo, max_bytes=1024)), base_url="http://t"
    )

    async def chunks(n: int) -> Any:
        for _ in range(n):
            yield b"x" * 256

    async with client:
        declared = await client.post("/", content=b"x" * 1025)
        assert declared.status_code == 413 and declared.json()["error"] == "body_too_large"
        streamed = await client.post("/", content=chunks(5))  # 1280 bytes, no length
        assert streamed.status_code == 413 and "1024" in streamed.json()["message"]
        exact = await client.post("/", content=chunks(4))
        assert (exact.status_code, exact.text) == (200, "1024")


async def test_serve_refuses_an_oversized_body_before_parsing(make_harness) -> None:
    """A predict body over serve_max_body_bytes is 413, not a 422 from the parser."""
    h = await make_harness(serve_max_body_bytes=2048)
    r = await h.client.post("/v1/predict", content=b"{" + b" " * 4096)
    assert r.status_code == 413
    assert h.log.records == []
