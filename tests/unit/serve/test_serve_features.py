"""Online feature reads: the pure lookup core, then the HTTP routes over in-memory fakes."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from libs.common.clients.redis import MemoryFeatureStore, StoredVector
from libs.common.definitions import Definitions
from services.serve.core.lookup import entity_features, select_views
from services.serve.errors import UnknownView

NOW = 1_800_000_000.0
FULL: dict[str, float | str | None] = {"temp_last": 70.0, "vib_last": 1.5}

# ---- core: which views a read covers ----------------------------------------


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (None, [("stats", 2), ("hourly", 1)]),
        ([], [("stats", 2), ("hourly", 1)]),
        (["hourly"], [("hourly", 1)]),
        (["hourly", "stats", "hourly"], [("hourly", 1), ("stats", 2)]),
    ],
)
def test_select_views(
    definitions: Definitions, requested: list[str] | None, expected: list[tuple[str, int]]
) -> None:
    """All views in definitions order by default; a filter keeps its order, once each."""
    assert select_views(definitions, requested) == expected


def test_unknown_view_names_the_known_ones(definitions: Definitions) -> None:
    """An unknown view is refused with the known views in the message."""
    with pytest.raises(
        UnknownView, match=r"no feature view 'nope'; known views: \['hourly', 'stats'\]"
    ):
        select_views(definitions, ["stats", "nope"])


# ---- core: the answer for one entity ----------------------------------------


def test_entity_features_reports_values_times_and_missing_views() -> None:
    """A found view carries its version, values, ISO times, freshness and age."""
    stored = {"stats": StoredVector(FULL, as_of=NOW - 30, updated_at=NOW - 2.5)}
    answer = entity_features("dev-1", [("stats", 2), ("hourly", 1)], stored, NOW)
    assert answer.found is True and answer.missing_views == ["hourly"]
    view = answer.views["stats"]
    assert (view.version, view.values) == (2, FULL)
    assert (view.freshness_s, view.age_s) == (2.5, 30.0)
    assert view.as_of == datetime.fromtimestamp(NOW - 30, UTC)
    dumped = answer.model_dump(mode="json")["views"]["stats"]
    assert dumped["updated_at"].endswith("Z") and dumped["as_of"].startswith("2027-01-15T")


def test_entity_features_not_found() -> None:
    """Nothing stored: not found, every read view missing."""
    answer = entity_features("cold", [("stats", 2), ("hourly", 1)], {}, NOW)
    assert (answer.found, answer.views, answer.missing_views) == (False, {}, ["stats", "hourly"])


@pytest.mark.parametrize(
    ("stored", "answered"),
    [
        ("ok", "ok"),
        ("7", "7"),  # a categorical that looks like a number stays a string
        (71.3, 71.3),
        (3, 3),
        (None, None),
        (math.nan, None),
        (math.inf, None),
    ],
)
def test_values_are_not_coerced(stored: object, answered: object) -> None:
    """Strings stay strings, numbers stay numbers; non-finite numbers become null."""
    vec = StoredVector({"x": stored}, NOW, NOW)  # type: ignore[dict-item]  # any stored value
    value = entity_features("e", [("stats", 2)], {"stats": vec}, NOW).views["stats"].values["x"]
    assert value == answered and type(value) is type(answered)


def test_clock_skew_never_gives_negative_ages() -> None:
    """A vector written 'in the future' (writer's clock ahead) reads as age 0."""
    vec = StoredVector(FULL, as_of=NOW + 5, updated_at=NOW + 5)
    view = entity_features("e", [("stats", 2)], {"stats": vec}, NOW).views["stats"]
    assert (view.freshness_s, view.age_s) == (0.0, 0.0)


# ---- HTTP -------------------------------------------------------------------


class CountingStore(MemoryFeatureStore):
    """A memory store counting read round trips."""

    reads: int = 0

    async def read_vectors(
        self, views: Sequence[tuple[str, int]], entity_ids: Sequence[str]
    ) -> list[dict[str, StoredVector]]:
        self.reads += 1
        return await super().read_vectors(views, entity_ids)


class BrokenStore(MemoryFeatureStore):
    """A store whose reads always fail."""

    async def read_vectors(
        self, views: Sequence[tuple[str, int]], entity_ids: Sequence[str]
    ) -> list[dict[str, StoredVector]]:
        raise ConnectionError("redis down")


async def test_get_features_of_one_entity(make_harness) -> None:
    """GET /v1/features/{id} answers each stored view and names the missing ones."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL, age_s=3)
    r = await h.client.get("/v1/features/dev-1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["entity_id"], body["found"], body["missing_views"]) == ("dev-1", True, ["hourly"])
    stats = body["views"]["stats"]
    assert (stats["version"], stats["values"]) == (2, FULL)
    assert 3 <= stats["freshness_s"] < 10 and 3 <= stats["age_s"] < 10
    assert datetime.fromisoformat(stats["as_of"]).tzinfo is not None
    assert h.service.counts["features_found"] == 1


async def test_string_values_pass_through_http(make_harness) -> None:
    """A categorical value written as a string is answered as that string."""
    h = await make_harness()
    now = time.time()
    await h.store.write_vectors(
        [("stats", 2, "dev-s", StoredVector({"temp_last": "12", "vib_last": None}, now, now))]
    )
    body = (await h.client.get("/v1/features/dev-s")).json()
    assert body["views"]["stats"]["values"] == {"temp_last": "12", "vib_last": None}


async def test_entity_ids_with_slashes(make_harness) -> None:
    """An entity id holding '/' is read through the path."""
    h = await make_harness()
    await h.put("site/a/dev-1", "hourly", {"temp_max": 1.0})
    r = await h.client.get("/v1/features/site%2Fa%2Fdev-1")
    assert r.status_code == 200 and r.json()["entity_id"] == "site/a/dev-1"


async def test_cold_start_is_404(make_harness) -> None:
    """No view holds a vector: 404 naming the entity and the views read."""
    h = await make_harness()
    r = await h.client.get("/v1/features/never-seen")
    assert r.status_code == 404
    assert r.json()["error"] == "features_not_found"
    assert "'never-seen'" in r.json()["message"] and "['stats', 'hourly']" in r.json()["message"]
    assert h.service.counts["features_not_found"] == 1


async def test_view_filter(make_harness) -> None:
    """?view= reads only the named views; filtered to a view without a vector is 404."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL)
    await h.put("dev-1", "hourly", {"temp_max": 80.0})
    r = await h.client.get("/v1/features/dev-1?view=hourly")
    assert (set(r.json()["views"]), r.json()["missing_views"]) == ({"hourly"}, [])
    await h.put("dev-2", "stats", FULL)
    assert (await h.client.get("/v1/features/dev-2?view=hourly")).status_code == 404


async def test_unknown_view_is_400(make_harness) -> None:
    """An unknown ?view= is 400 naming the known views, on both routes."""
    h = await make_harness()
    r = await h.client.get("/v1/features/dev-1?view=stats&view=nope")
    assert r.status_code == 400 and r.json()["error"] == "unknown_view"
    assert "['hourly', 'stats']" in r.json()["message"]
    r = await h.client.post("/v1/features/batch?view=nope", json={"entity_ids": ["a"]})
    assert r.status_code == 400


async def test_batch_answers_in_order_with_one_read(make_harness) -> None:
    """POST /v1/features/batch answers each entity in order, found or not, in one read."""
    store = CountingStore()
    h = await make_harness(store=store)
    now = time.time()
    await store.write_vectors(
        [
            ("stats", 2, "a", StoredVector(FULL, now, now)),
            ("hourly", 1, "c", StoredVector({}, 1, 1)),
        ]
    )
    store.reads = 0
    r = await h.client.post("/v1/features/batch", json={"entity_ids": ["c", "b", "a", "c"]})
    assert r.status_code == 200, r.text
    entities = r.json()["entities"]
    assert [(e["entity_id"], e["found"]) for e in entities] == [
        ("c", True),
        ("b", False),
        ("a", True),
        ("c", True),
    ]
    assert entities[1]["views"] == {} and entities[1]["missing_views"] == ["stats", "hourly"]
    assert store.reads == 1


async def test_batch_is_bounded(make_harness) -> None:
    """More entities than features_batch_max is 413 with the limit in the message."""
    h = await make_harness(features_batch_max=3)
    ok = await h.client.post("/v1/features/batch", json={"entity_ids": ["a", "b", "c"]})
    assert ok.status_code == 200
    r = await h.client.post("/v1/features/batch", json={"entity_ids": ["a", "b", "c", "d"]})
    assert r.status_code == 413 and "at most 3" in r.json()["message"]
    assert h.service.counts["features_batch_too_large"] == 1


@pytest.mark.parametrize(
    "body", [{"entity_ids": []}, {"entity_ids": [""]}, {"entity_ids": ["x" * 257]}, {}]
)
async def test_bad_batch_bodies_are_422(make_harness, body: dict[str, object]) -> None:
    """An empty list, an empty or overlong id, or no ids is a 422 saying what is wrong."""
    h = await make_harness()
    r = await h.client.post("/v1/features/batch", json=body)
    assert r.status_code == 422 and "entity_ids" in r.json()["message"]


async def test_store_down_is_503_with_retry_after(make_harness) -> None:
    """A failing store answers 503 with Retry-After and a message, never 500; once the
    breaker is open, Retry-After is its reset time.
    """
    h = await make_harness(store=BrokenStore(), breaker_fail_max=2, breaker_reset_s=7)
    # The first failure leaves the breaker closed: retry soon.
    r = await h.client.get("/v1/features/dev-1")
    assert (r.status_code, r.headers["Retry-After"]) == (503, "1")
    assert r.json()["error"] == "feature_store_unavailable"
    assert "feature store" in r.json()["message"]
    # The second opens it: reads fail fast until the reset.
    r = await h.client.get("/v1/features/dev-1")
    assert (r.status_code, r.headers["Retry-After"]) == (503, "7")
    assert h.service.reader.state == "open"
    r = await h.client.post("/v1/features/batch", json={"entity_ids": ["a"]})
    assert (r.status_code, r.headers["Retry-After"]) == (503, "7")
    assert h.service.counts["features_feature_store_unavailable"] == 3


async def test_openapi_documents_the_routes(make_harness) -> None:
    """Both routes appear in the OpenAPI document with response schemas."""
    h = await make_harness()
    doc = (await h.client.get("/openapi.json")).json()
    one = doc["paths"]["/v1/features/{entity_id}"]["get"]["responses"]
    assert one["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/EntityFeatures")
    assert {"400", "404", "503"} <= set(one)
    batch = doc["paths"]["/v1/features/batch"]["post"]
    assert batch["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/FeaturesBatchAnswer"
    )
    assert "413" in batch["responses"]
    assert {"ViewFeatures", "EntityFeatures", "ErrorAnswer"} <= set(doc["components"]["schemas"])
