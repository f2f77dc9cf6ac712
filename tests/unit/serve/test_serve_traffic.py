"""Champion/challenger split and shadow mode: routing decisions, settings kept in the
registry (the in-memory fake here), and shadow scores logged but never returned."""

from __future__ import annotations

import pytest

from libs.common.schemas import ModelChanged
from services.serve.adapters.memory import MemoryModelSource
from services.serve.core.traffic import Routing, TrafficSettings, route, traffic_split
from services.serve.errors import InvalidTraffic, UnknownModel
from services.serve.schemas import PredictRequest

FULL = {"temp_last": 70.0, "vib_last": 1.5}
IDS = [f"device-{i}" for i in range(2000)]


def test_split_routes_the_fraction_and_sticks() -> None:
    """Without shadow, about the fraction of entities go to the challenger, always the same."""
    traffic = TrafficSettings(0.3)
    first = [route(e, traffic, has_challenger=True) for e in IDS]
    assert first == [route(e, traffic, has_challenger=True) for e in IDS]
    share = sum(r.answer == "challenger" for r in first) / len(IDS)
    assert 0.25 < share < 0.35
    assert all(r.shadow is None for r in first)


def test_shadow_answers_with_the_champion_and_scores_the_challenger() -> None:
    """In shadow mode every entity is answered by the champion; the challenger shadows it."""
    traffic = TrafficSettings(0.3, shadow=True)
    assert {route(e, traffic, has_challenger=True) for e in IDS} == {
        Routing("champion", "challenger")
    }
    assert {route(e, traffic, has_challenger=False) for e in IDS} == {Routing("champion")}


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_traffic_settings_reject_out_of_range(fraction: float) -> None:
    """A fraction outside 0..1 is refused naming the value."""
    with pytest.raises(ValueError, match=f"got {fraction}"):
        TrafficSettings(fraction)


def test_shadow_split_gives_the_challenger_no_share() -> None:
    """The reported split in shadow mode: the champion answers all."""
    assert traffic_split(0.3, has_champion=True, has_challenger=True, shadow=True) == {
        "champion": 1.0
    }


def test_memory_source_keeps_settings_and_none_leaves_them() -> None:
    """The fake registry stores fraction and shadow; None leaves a setting as it is."""
    source = MemoryModelSource()
    assert source.traffic_settings("default") == (None, False)
    source.set_traffic_settings("default", 0.4, None)
    source.set_traffic_settings("default", None, True)
    assert source.traffic_settings("default") == (0.4, True)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        source.set_traffic_settings("default", 2.0, None)


async def test_catalog_reads_tags_on_refresh_and_falls_back_to_the_setting(
    make_harness,
) -> None:
    """Registry tags override the setting at the next refresh; unset means the setting."""
    h = await make_harness(challenger_fraction=0.1)
    assert h.service.catalog.traffic("default") == TrafficSettings(0.1)
    h.models.set_traffic_settings("default", 0.5, True)
    await h.service.catalog.refresh("default")
    assert h.service.catalog.traffic("default") == TrafficSettings(0.5, shadow=True)
    assert h.service.catalog.traffic("other") == TrafficSettings(0.1)


async def test_set_traffic_validates_writes_and_refreshes(make_harness, train) -> None:
    """set_traffic stores the settings, applies them on this replica and returns the view."""
    h = await make_harness()
    h.models.register(
        "default", "2", train(h.definitions.model("default"), seed=1), alias="challenger"
    )
    view = await h.service.catalog.set_traffic("default", challenger_fraction=0.25, shadow=None)
    assert h.models.traffic_settings("default") == (0.25, False)
    assert view.traffic["default"] == {"champion": 0.75, "challenger": 0.25}
    assert (view.challenger_fraction["default"], view.shadow["default"]) == (0.25, False)
    view = await h.service.catalog.set_traffic("default", challenger_fraction=None, shadow=True)
    assert view.traffic["default"] == {"champion": 1.0} and view.shadow["default"] is True
    assert view.challenger_fraction["default"] == 0.25
    with pytest.raises(InvalidTraffic, match=r"within 0\.\.1, got 1\.5"):
        await h.service.catalog.set_traffic("default", challenger_fraction=1.5, shadow=None)
    with pytest.raises(UnknownModel, match="'nope' is not defined"):
        await h.service.catalog.set_traffic("nope", challenger_fraction=0.1, shadow=None)
    assert h.models.traffic_settings("default") == (0.25, True)


async def test_traffic_changed_event_refreshes_the_settings(make_harness) -> None:
    """A traffic_changed ModelChanged makes a replica re-read the model's tags."""
    h = await make_harness()
    h.models.set_traffic_settings("default", 0.9, None)
    await h.service.catalog.on_model_changed(
        ModelChanged(kind="traffic_changed", model="default", version="1")
    )
    assert h.service.catalog.traffic("default").challenger_fraction == 0.9


async def test_shadow_scores_are_logged_and_never_returned(make_harness, train) -> None:
    """Shadow on: answers are the champion's; each row's challenger score is logged,
    marked shadow, with the same features and its own prediction id."""
    h = await make_harness()
    challenger = train(h.definitions.model("default"), seed=5)
    h.models.register("default", "2", challenger, alias="challenger")
    await h.service.catalog.set_traffic("default", challenger_fraction=1.0, shadow=True)
    ids = [f"dev-{i}" for i in range(20)]
    for e in ids:
        await h.put(e, "stats", FULL | {"temp_last": float(len(e))})
        await h.put(e, "hourly", {"temp_max": 80.0})
    answers = await h.service.predict([PredictRequest(entity_id=e) for e in ids])
    assert {a.model.variant for a in answers} == {"champion"}
    assert {a.model.version for a in answers} == {"1"}

    answered = {a.prediction_id for a in answers}
    logged = [event for _, event in h.log.records]
    shadows = [e for e in logged if e.shadow]
    assert len(shadows) == len(ids) and not answered & {e.event_id for e in shadows}
    assert {(e.model.version, e.model.variant) for e in shadows} == {("2", "challenger")}
    by_entity = {e.entity_id: e for e in logged if not e.shadow}
    for s in shadows:
        assert s.features == by_entity[s.entity_id].features
    # The challenger's own scores, not the champion's.
    direct = await make_harness(register=False)
    direct.models.register("default", "2", challenger)
    await direct.service.catalog.refresh("default")
    for e in ids:
        await direct.put(e, "stats", FULL | {"temp_last": float(len(e))})
        await direct.put(e, "hourly", {"temp_max": 80.0})
    expected = await direct.service.predict([PredictRequest(entity_id=e) for e in ids])
    assert [s.score for s in shadows] == [x.score for x in expected]
    assert h.service.counts["shadow_challenger"] == len(ids)


async def test_shadow_without_challenger_logs_nothing_extra(make_harness) -> None:
    """Shadow mode with no challenger loaded: answers as usual, no shadow records."""
    h = await make_harness()
    await h.service.catalog.set_traffic("default", challenger_fraction=None, shadow=True)
    await h.put("dev-1", "stats", FULL)
    await h.service.predict([PredictRequest(entity_id="dev-1")])
    assert [e.shadow for _, e in h.log.records] == [False]


async def test_fallback_answers_get_no_shadow(make_harness, train) -> None:
    """A cold-start entity is answered by the fallback and nothing scores it in the shadow."""
    h = await make_harness()
    h.models.register(
        "default", "2", train(h.definitions.model("default"), seed=1), alias="challenger"
    )
    await h.service.catalog.set_traffic("default", challenger_fraction=None, shadow=True)
    (a,) = await h.service.predict([PredictRequest(entity_id="never-seen")])
    assert a.model.variant == "fallback"
    assert [e.shadow for _, e in h.log.records] == [False]
