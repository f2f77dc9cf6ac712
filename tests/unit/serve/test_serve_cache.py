"""The prediction cache: keys that change with every input a score depends on, hits that
never serve a stale model or stale features, and only undegraded scores kept."""

from __future__ import annotations

from typing import Any

import pytest

from libs.common.schemas import ModelChanged
from services.serve.core.cache import PredictionCache, prediction_key
from services.serve.schemas import PredictRequest

FULL = {"temp_last": 70.0, "vib_last": 1.5}
BASE: dict[str, Any] = {
    "model": "default",
    "version": "1",
    "variant": "champion",
    "entity_id": "dev-1",
    "views": {"stats": (2, 100.0, 100.5), "hourly": (1, 90.0, 100.4)},
    "supplied": None,
}


@pytest.mark.parametrize(
    "change",
    [
        {"version": "2"},
        {"variant": "challenger"},
        {"model": "other"},
        {"entity_id": "dev-2"},
        {"views": {"stats": (3, 100.0, 100.5), "hourly": (1, 90.0, 100.4)}},  # view version
        {"views": {"stats": (2, 101.0, 101.5), "hourly": (1, 90.0, 100.4)}},  # newer event
        {"views": {"stats": (2, 100.0, 100.9), "hourly": (1, 90.0, 100.4)}},  # late rewrite
        {"views": {"stats": (2, 100.0, 100.5)}},  # a view missing
        {"supplied": {"stats.temp_last": 1.0}},
    ],
)
def test_every_input_changes_the_key(change: dict[str, object]) -> None:
    """Model, version, variant, entity, each vector's stamps and supplied values are all in
    the key, so a changed one can never hit an old score."""
    assert prediction_key(**{**BASE, **change}) != prediction_key(**BASE)


def test_key_ignores_order_of_views_and_supplied() -> None:
    """The same inputs in another order make the same key."""
    a = prediction_key(**{**BASE, "supplied": {"a.x": 1.0, "b.y": None}})
    b = prediction_key(
        **{
            **BASE,
            "views": dict(reversed(list(BASE["views"].items()))),
            "supplied": {"b.y": None, "a.x": 1.0},
        }
    )
    assert a == b and hash(a) == hash(b)


def test_cache_counts_hits_and_misses_and_stays_bounded() -> None:
    """Lookups count hits and misses; the LRU keeps at most `size` scores."""
    cache = PredictionCache(2)
    keys = [prediction_key(**{**BASE, "entity_id": f"e{i}"}) for i in range(3)]
    assert cache.get(keys[0]) is None
    for i, k in enumerate(keys):
        cache.put(k, i / 10)
    assert len(cache) == 2 and cache.get(keys[0]) is None  # evicted, least recently used
    assert cache.get(keys[2]) == 0.2
    assert (cache.hits, cache.misses) == (1, 2)


def test_disabled_cache_keeps_nothing() -> None:
    """Size 0 turns it off: nothing is stored and nothing is counted."""
    cache = PredictionCache(0)
    key = prediction_key(**BASE)
    cache.put(key, 0.5)
    assert cache.get(key) is None and (cache.hits, cache.misses, len(cache)) == (0, 0, 0)


async def test_repeat_is_a_hit_with_a_new_prediction_id_and_logged(make_harness) -> None:
    """The same entity with unchanged vectors hits: same score, new prediction id, logged."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL)
    await h.put("dev-1", "hourly", {"temp_max": 80.0})
    (first,) = await h.service.predict([PredictRequest(entity_id="dev-1")])
    (second,) = await h.service.predict([PredictRequest(entity_id="dev-1")])
    assert second.score == first.score and second.prediction_id != first.prediction_id
    assert second.degraded is False and second.model == first.model
    assert [e.event_id for _, e in h.log.records] == [first.prediction_id, second.prediction_id]
    assert h.service.counts["cache_hit"] == 1 and h.service.counts["cache_miss"] == 1
    health = h.service.health()
    assert health["counts"]["cache_hit"] == 1
    assert health["prediction_cache"] | {"size": 1} == {
        "enabled": True,
        "size": 1,
        "hits": 1,
        "misses": 1,
    }


async def test_feature_update_is_a_miss_with_the_new_score(make_harness) -> None:
    """A rewritten vector (new values) is never answered from the old score."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL, age_s=2)
    await h.put("dev-1", "hourly", {"temp_max": 80.0})
    (before,) = await h.service.predict([PredictRequest(entity_id="dev-1")])
    await h.put("dev-1", "stats", {"temp_last": -40.0, "vib_last": 9.0}, age_s=1)
    (after,) = await h.service.predict([PredictRequest(entity_id="dev-1")])
    assert h.service.counts["cache_hit"] == 0 and h.service.counts["cache_miss"] == 2
    # The score is the model's own on the new values (compare with the cache off).
    off = await make_harness(prediction_cache_enabled=False)
    await off.put("dev-1", "stats", {"temp_last": -40.0, "vib_last": 9.0}, age_s=1)
    await off.put("dev-1", "hourly", {"temp_max": 80.0})
    (expected,) = await off.service.predict([PredictRequest(entity_id="dev-1")])
    assert after.score == expected.score and after.score != before.score


async def test_model_swap_is_a_miss_scored_by_the_new_version(make_harness, train) -> None:
    """After a new champion loads, the old version's cached score is never returned."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL)
    await h.put("dev-1", "hourly", {"temp_max": 80.0})
    (v1,) = await h.service.predict([PredictRequest(entity_id="dev-1")])
    h.models.register("default", "2", train(h.definitions.model("default"), seed=7))
    await h.service.catalog.on_model_changed(
        ModelChanged(kind="promoted", model="default", version="2", alias="champion")
    )
    (v2,) = await h.service.predict([PredictRequest(entity_id="dev-1")])
    assert (v1.model.version, v2.model.version) == ("1", "2")
    assert h.service.counts["cache_hit"] == 0
    (again,) = await h.service.predict([PredictRequest(entity_id="dev-1")])
    assert again.score == v2.score and h.service.counts["cache_hit"] == 1


async def test_degraded_answers_are_not_cached_and_explain_does_not_read(make_harness) -> None:
    """Partial features (degraded) are never cached; explain never reads the cache (its
    contributions are not kept), though its undegraded score is stored."""
    h = await make_harness()
    await h.put("dev-1", "stats", {"temp_last": 1.0, "vib_last": None})  # hourly missing
    for _ in range(2):
        (a,) = await h.service.predict([PredictRequest(entity_id="dev-1")])
        assert a.degraded and a.reasons == ["partial_features"]
    await h.put("dev-2", "stats", FULL)
    await h.put("dev-2", "hourly", {"temp_max": 80.0})
    for _ in range(2):
        (b,) = await h.service.predict([PredictRequest(entity_id="dev-2")], explain=True)
        assert b.contributions
    assert (h.service.cache.hits, h.service.cache.misses) == (0, 0)
    (c,) = await h.service.predict([PredictRequest(entity_id="dev-2")])
    assert c.score == b.score and c.contributions is None
    assert (h.service.cache.hits, len(h.service.cache)) == (1, 1)


async def test_supplied_features_are_part_of_the_key(make_harness) -> None:
    """Different supplied values for the same entity are different cache entries."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL)
    await h.put("dev-1", "hourly", {"temp_max": 80.0})
    hot = PredictRequest(entity_id="dev-1", features={"stats.temp_last": 140.0})
    cold = PredictRequest(entity_id="dev-1", features={"stats.temp_last": -45.0})
    a, b = await h.service.predict([hot, cold])
    c, d = await h.service.predict([hot, cold])
    assert (c.score, d.score) == (a.score, b.score) and a.score != b.score
    assert h.service.counts["cache_hit"] == 2 and h.service.counts["cache_miss"] == 2
