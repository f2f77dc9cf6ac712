"""The prediction API over the inference service, with in-memory store, registry and log."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.clients.redis import MemoryFeatureStore, StoredVector
from libs.common.schemas import ModelChanged
from services.serve.core.predict import BIAS, Predictor

FULL = {"temp_last": 70.0, "vib_last": 1.5}


async def _until(check: Callable[[], Any], timeout_s: float = 5.0) -> None:
    """Bounded wait for an asynchronous effect."""
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 - polls an effect that has no event
            await asyncio.sleep(0.01)


async def test_predict_scores_with_the_champion(make_harness) -> None:
    """A known entity gets the champion's score, version and freshness, and is logged."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL, age_s=3)
    await h.put("dev-1", "hourly", {"temp_max": 80.0}, age_s=1)
    r = await h.client.post("/v1/predict", json={"entity_id": "dev-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "default", "version": "1", "variant": "champion"}
    assert 0 <= body["score"] <= 1
    assert body["degraded"] is False and body["reasons"] == []
    assert 3 <= body["feature_freshness_s"] < 10
    assert body["latency_ms"] >= 0 and "contributions" not in body
    ((key, event),) = h.log.records
    assert key == "dev-1" and event.event_id == body["prediction_id"]
    assert event.features["hourly.temp_max"] == 80.0 and event.score == body["score"]


async def test_cold_start_is_answered_by_the_fallback(make_harness) -> None:
    """An entity without features gets the fallback score, degraded, reason no_features."""
    h = await make_harness()
    r = await h.client.post("/v1/predict", json={"entity_id": "never-seen"})
    assert r.status_code == 200
    body = r.json()
    assert body["score"] == 0.3
    assert body["model"] == {"name": "default", "version": "1", "variant": "fallback"}
    assert (body["degraded"], body["reasons"]) == (True, ["no_features"])
    assert h.log.records[0][1].model.variant == "fallback"


async def test_no_model_is_answered_by_the_fallback(make_harness) -> None:
    """With nothing in the registry, every answer is the fallback with reason no_model."""
    h = await make_harness(register=False)
    await h.put("dev-1", "stats", FULL)
    r = await h.client.post("/v1/predict", json={"entity_id": "dev-1", "model": "other"})
    body = r.json()
    assert (r.status_code, body["score"], body["reasons"]) == (200, 0.7, ["no_model"])
    assert body["model"]["version"] == "none"


async def test_explain_adds_contributions(make_harness) -> None:
    """?explain=true adds per-feature contributions that sum to the raw score."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL)
    await h.put("dev-1", "hourly", {"temp_max": 80.0})
    r = await h.client.post("/v1/predict?explain=true", json={"entity_id": "dev-1"})
    contribs = r.json()["contributions"]
    assert set(contribs) == {"stats.temp_last", "stats.vib_last", "hourly.temp_max", BIAS}
    score = r.json()["score"]
    assert math.isclose(1 / (1 + math.exp(-sum(contribs.values()))), score, rel_tol=1e-9)


async def test_supplied_features_score_without_the_store(make_harness) -> None:
    """Supplying every feature scores an entity the store has never seen."""
    h = await make_harness()
    features = {"stats.temp_last": 1.0, "stats.vib_last": 2.0, "hourly.temp_max": 3.0}
    r = await h.client.post("/v1/predict", json={"entity_id": "new", "features": features})
    body = r.json()
    assert (body["model"]["variant"], body["degraded"]) == ("champion", False)
    expected = Predictor.from_booster(h.models.boosters[("default", "1")]).predict([[1, 2, 3]])
    assert math.isclose(body["score"], float(expected[0]))


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        ({"entity_id": "e", "model": "nope"}, {}, 404, "model 'nope' is not defined"),
        ({"entity_id": "e", "features": {"x.y": 1}}, {}, 400, "has no feature 'x.y'"),
        ({"entity_id": "e"}, {"X-Priority": "urgent"}, 400, "X-Priority must be one of"),
        ({}, {}, 422, "body.entity_id: Field required"),
        ({"entity_id": ""}, {}, 422, "body.entity_id: String should have at least 1"),
        ({"entity_id": "e", "extra": 1}, {}, 422, "body.extra: Extra inputs are not permitted"),
        (
            {"entity_id": "e", "features": {"stats.temp_last": "hot"}},
            {},
            422,
            "body.features.stats.temp_last",
        ),
    ],
)
async def test_bad_requests_say_what_is_wrong(
    make_harness, body: dict[str, Any], headers: dict[str, str], status: int, message: str
) -> None:
    """Client errors get a 4xx whose message names the offending part."""
    h = await make_harness()
    r = await h.client.post("/v1/predict", json=body, headers=headers)
    assert r.status_code == status, r.text
    assert message in r.json()["message"]


async def test_lone_surrogate_entity_is_a_client_error(make_harness) -> None:
    """JSON may escape a lone surrogate, which no Redis key or Kafka record can hold: 422."""
    h = await make_harness()
    r = await h.client.post(
        "/v1/predict",
        content=rb'{"entity_id": "\ud800"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422 and "body.entity_id" in r.json()["message"]


async def test_malformed_json_is_a_client_error(make_harness) -> None:
    """A body that is not JSON is a 422, not a server error."""
    h = await make_harness()
    r = await h.client.post(
        "/v1/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


class CountingStore(MemoryFeatureStore):
    """A memory store counting read round trips."""

    reads: int = 0

    async def read_vectors(
        self, views: Sequence[tuple[str, int]], entity_ids: Sequence[str]
    ) -> list[dict[str, StoredVector]]:
        self.reads += 1
        return await super().read_vectors(views, entity_ids)


async def test_batch_reads_once_and_predicts_once(make_harness, monkeypatch) -> None:
    """A batch makes one store read and one predict call, answering in request order."""
    store = CountingStore()
    h = await make_harness(store=store)
    calls: list[int] = []
    real = Predictor.predict
    monkeypatch.setattr(
        Predictor, "predict", lambda self, rows: calls.append(len(rows)) or real(self, rows)
    )
    ids = [f"dev-{i}" for i in range(100)]
    for e in ids[:60]:
        await store.write_vectors(
            [
                ("stats", 2, e, StoredVector(FULL, 1.0, 1.0)),
                ("hourly", 1, e, StoredVector({"temp_max": 9.0}, 1.0, 1.0)),
            ]
        )
    r = await h.client.post("/v1/predict/batch", json={"requests": [{"entity_id": e} for e in ids]})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["entity_id"] for p in preds] == ids
    assert [p["model"]["variant"] for p in preds] == ["champion"] * 60 + ["fallback"] * 40
    assert (store.reads, calls) == (1, [60])


async def test_batch_is_bounded(make_harness) -> None:
    """More requests than batch_max in one call is 413 with the limit in the message."""
    h = await make_harness(batch_max=5)
    r = await h.client.post(
        "/v1/predict/batch", json={"requests": [{"entity_id": str(i)} for i in range(6)]}
    )
    assert r.status_code == 413 and "at most 5" in r.json()["message"]


class BrokenStore(MemoryFeatureStore):
    """A store whose reads always fail, counting attempts."""

    attempts: int = 0

    async def read_vectors(
        self, views: Sequence[tuple[str, int]], entity_ids: Sequence[str]
    ) -> list[dict[str, StoredVector]]:
        self.attempts += 1
        raise ConnectionError("redis down")


async def test_store_failure_falls_back_and_opens_the_breaker(make_harness) -> None:
    """A failing store yields fallbacks; after fail_max failures the store is not called."""
    store = BrokenStore()
    h = await make_harness(store=store, breaker_fail_max=3)
    for _ in range(6):
        r = await h.client.post("/v1/predict", json={"entity_id": "dev-1"})
        body = r.json()
        assert (r.status_code, body["reasons"]) == (200, ["feature_store_unavailable"])
        assert body["model"]["variant"] == "fallback" and body["score"] == 0.3
    assert store.attempts == 3
    assert h.service.reader.state == "open"


class SlowStore(MemoryFeatureStore):
    """A store whose reads wait until released, to hold requests in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def read_vectors(
        self, views: Sequence[tuple[str, int]], entity_ids: Sequence[str]
    ) -> list[dict[str, StoredVector]]:
        await self.gate.wait()
        return await super().read_vectors(views, entity_ids)


async def test_low_priority_is_shed_while_high_is_served(make_harness) -> None:
    """With requests in flight above the low limit, low gets 429 + Retry-After, high passes."""
    store = SlowStore()
    h = await make_harness(
        store=store,
        priority_low_limit=2,
        priority_normal_limit=3,
        priority_hard_cap=5,
        feature_timeout_s=5,
    )
    held = [
        asyncio.create_task(h.client.post("/v1/predict", json={"entity_id": f"n{i}"}))
        for i in range(3)
    ]

    async def three_in_flight() -> bool:
        return h.service.limiter.in_flight == 3

    await _until(three_in_flight)
    low = await h.client.post("/v1/predict", json={"entity_id": "l"}, headers={"X-Priority": "low"})
    normal = await h.client.post("/v1/predict", json={"entity_id": "n"})
    assert (low.status_code, low.headers["Retry-After"]) == (503, "1")
    assert normal.status_code == 503 and "normal priority" in normal.json()["message"]
    high = asyncio.create_task(
        h.client.post("/v1/predict", json={"entity_id": "h"}, headers={"X-Priority": "high"})
    )

    async def four_in_flight() -> bool:
        return h.service.limiter.in_flight == 4

    await _until(four_in_flight)
    store.gate.set()
    assert (await high).status_code == 200
    assert [(await t).status_code for t in held] == [200, 200, 200]
    assert h.service.limiter.in_flight == 0


async def test_models_view_and_challenger_split(make_harness, train) -> None:
    """/v1/models lists champion and challenger; entities split by their stable bucket."""
    h = await make_harness(challenger_fraction=0.5)
    h.models.register(
        "default", "2", train(h.definitions.model("default"), seed=1), alias="challenger"
    )
    assert await h.service.catalog.refresh("default") is True
    view = (await h.client.get("/v1/models")).json()
    served = {(m["name"], m["version"], m["variant"]) for m in view["models"]}
    assert served == {
        ("default", "1", "champion"),
        ("default", "2", "challenger"),
        ("other", None, "fallback"),
    }
    assert view["traffic"] == {
        "default": {"champion": 0.5, "challenger": 0.5},
        "other": {"fallback": 1.0},
    }
    ids = [f"dev-{i}" for i in range(40)]
    for e in ids:
        await h.put(e, "stats", FULL)
    r = await h.client.post("/v1/predict/batch", json={"requests": [{"entity_id": e} for e in ids]})
    variants = [p["model"]["variant"] for p in r.json()["predictions"]]
    assert {"champion", "challenger"} == set(variants)
    again = await h.client.post(
        "/v1/predict/batch", json={"requests": [{"entity_id": e} for e in ids]}
    )
    assert variants == [p["model"]["variant"] for p in again.json()["predictions"]]


async def test_model_event_swaps_the_champion(make_harness, train) -> None:
    """A ModelChanged event makes the replica load and serve the new champion."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL)
    h.models.register("default", "2", train(h.definitions.model("default"), seed=2))
    await h.events.publish(
        ModelChanged(kind="promoted", model="default", version="2", alias="champion")
    )

    async def serves_v2() -> bool:
        r = await h.client.post("/v1/predict", json={"entity_id": "dev-1"})
        return r.json()["model"]["version"] == "2"

    await _until(serves_v2)
    assert h.models.loads[("default", "2")] == 1
    # an event for a model this replica does not serve changes nothing
    await h.events.publish(ModelChanged(kind="promoted", model="elsewhere", version="9"))
    assert (await h.client.get("/v1/models")).json()["models"][0]["version"] == "2"


async def test_a_failed_load_keeps_the_current_model(make_harness) -> None:
    """A new version whose inputs do not match is refused; the old champion keeps serving."""
    h = await make_harness()
    x = np.array([[0.0], [1.0]] * 20)
    bad = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, x[:, 0], feature_name=["wrong"]),
        2,
    )
    h.models.register("default", "2", bad)
    assert await h.service.catalog.refresh("default") is False
    assert h.service.catalog.slot("default").champion.version == "1"
    _, ready = await h.service.readiness()
    assert ready["models"]["default"].startswith("champion v1; last load failed: ModelMismatch")


async def test_admin_reload_needs_the_token(make_harness, train) -> None:
    """Reload is 401 without a token or with an unknown one, and picks up a new champion."""
    h = await make_harness()
    h.models.register("default", "5", train(h.definitions.model("default"), seed=5))
    r = await h.client.post("/v1/admin/reload")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    r = await h.client.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    token = h.service.settings.admin_token.get_secret_value()
    r = await h.client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["changed"] == ["default"]
    assert h.service.catalog.slot("default").champion.version == "5"


async def test_registry_poll_picks_up_a_first_model(make_harness, train) -> None:
    """A replica that started with no model picks the first champion up by polling."""
    h = await make_harness(register=False, registry_poll_s=0.05)
    h.models.register("default", "1", train(h.definitions.model("default")))

    async def loaded() -> bool:
        return h.service.catalog.slot("default").champion is not None

    await _until(loaded)


async def test_readiness_says_why_not(make_harness) -> None:
    """/readyz is 503 with reasons until started, then 200 listing what serves."""
    h = await make_harness(start=False)
    r = await h.client.get("/readyz")
    assert r.status_code == 503 and r.json()["reasons"] == ["starting: champions not loaded yet"]
    await h.service.start()
    r = await h.client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["models"] == {
        "default": "champion v1",
        "other": "fallback (no champion in the registry yet)",
    }
    assert (await h.client.get("/healthz")).json()["status"] == "ok"


@pytest.fixture(name="harness")
async def _harness(make_harness):
    """One started harness shared by all examples of a hypothesis test."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL)
    return h


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
BODIES = JSON | st.fixed_dictionaries(
    {"entity_id": JSON | st.text(max_size=30)},
    optional={
        "model": JSON | st.sampled_from(["default", "other"]),
        "features": st.dictionaries(
            st.sampled_from(["stats.temp_last", "hourly.temp_max", "x"]), JSON, max_size=3
        ),
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=BODIES,
    explain=st.sampled_from(["true", "false", "maybe"]),
    priority=st.sampled_from(["high", "low", "", "bogus"]),
)
async def test_arbitrary_json_never_gives_a_server_error(
    harness, body: Any, explain: str, priority: str
) -> None:
    """No JSON body, explain flag or priority header makes the predict routes answer 5xx."""
    h = harness
    for path in ("/v1/predict", "/v1/predict/batch"):
        payload = {"requests": [body]} if path.endswith("batch") else body
        r = await h.client.post(
            f"{path}?explain={explain}", json=payload, headers={"X-Priority": priority}
        )
        assert r.status_code < 500, r.text
        assert "message" in r.json() or "prediction_id" in r.json() or "predictions" in r.json()


async def test_plain_curl_body_is_read_as_json(make_harness) -> None:  # type: ignore[no-untyped-def]
    """`curl -d '{...}'` (form content type) gets a prediction, not a 422."""
    h = await make_harness()
    resp = await h.client.post(
        "/v1/predict",
        content=b'{"entity_id": "device-1"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["entity_id"] == "device-1"
