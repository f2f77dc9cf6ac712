"""Building answers: feature rows, cold start, fallbacks, degraded reasons, traffic split."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import lightgbm as lgb
import pytest

from libs.common.definitions import Definitions
from services.serve.core.predict import (
    NO_FEATURES,
    NO_MODEL,
    PARTIAL_FEATURES,
    FeatureRow,
    Predictor,
    ServedModel,
    assemble_features,
    check_supplied,
    fallback_answer,
    prediction_event,
    scored_answer,
)
from services.serve.core.traffic import bucket, choose_variant, traffic_split
from services.serve.errors import InvalidFeatures

NOW = 1_000_000.0


@dataclass(frozen=True)
class Vec:
    values: dict[str, float | None]
    updated_at: float


def test_cold_start_has_no_row(definitions: Definitions) -> None:
    """Nothing stored and nothing supplied is a cold start: no row at all."""
    assert assemble_features(definitions.model("default"), {}, None, NOW) is None


def test_row_follows_model_order_with_oldest_freshness(definitions: Definitions) -> None:
    """Values land in the model's feature order; freshness is the oldest view's age."""
    vectors = {
        "stats": Vec({"temp_last": 70.0, "vib_last": None}, NOW - 2.0),
        "hourly": Vec({"temp_max": 80.0}, NOW - 30.0),
    }
    row = assemble_features(definitions.model("default"), vectors, None, NOW)
    assert row is not None
    assert row.row[0] == 70.0 and math.isnan(row.row[1]) and row.row[2] == 80.0
    assert row.features == {
        "stats.temp_last": 70.0,
        "stats.vib_last": None,
        "hourly.temp_max": 80.0,
    }
    assert row.freshness_s == 30.0
    assert row.reasons == ()


def test_missing_view_is_partial(definitions: Definitions) -> None:
    """A model view without a vector leaves NaNs and marks the row partial."""
    vectors = {"stats": Vec({"temp_last": 70.0, "vib_last": 1.0}, NOW)}
    row = assemble_features(definitions.model("default"), vectors, None, NOW)
    assert row is not None and math.isnan(row.row[2])
    assert row.reasons == (PARTIAL_FEATURES,)


def test_supplied_values_override_and_fill(definitions: Definitions) -> None:
    """Supplied 'view.feature' values win over stored ones and fill missing views."""
    vectors = {"stats": Vec({"temp_last": 70.0, "vib_last": 1.0}, NOW - 5)}
    supplied = {"stats.temp_last": 99.0, "hourly.temp_max": 120.0}
    row = assemble_features(definitions.model("default"), vectors, supplied, NOW)
    assert row is not None
    assert row.row == [99.0, 1.0, 120.0]
    assert row.reasons == ()
    assert row.freshness_s == 5.0


def test_supplied_alone_is_not_a_cold_start(definitions: Definitions) -> None:
    """With every feature supplied, an unknown entity is scored; freshness is unknown."""
    supplied = {"stats.temp_last": 1.0, "stats.vib_last": 2.0, "hourly.temp_max": 3.0}
    row = assemble_features(definitions.model("default"), {}, supplied, NOW)
    assert row is not None and row.row == [1.0, 2.0, 3.0] and row.freshness_s is None


def test_unknown_supplied_feature_is_rejected(definitions: Definitions) -> None:
    """Supplying a feature the model does not use names it and the model's features."""
    with pytest.raises(InvalidFeatures, match=r"model 'other' has no feature 'stats.vib_last'"):
        check_supplied(definitions.model("other"), {"stats.vib_last": 1.0})


@pytest.mark.parametrize(
    ("version", "reasons", "shown"),
    [(None, [NO_MODEL], "none"), ("4", [NO_FEATURES], "4")],
)
def test_fallback_answer(
    definitions: Definitions, version: str | None, reasons: list[str], shown: str
) -> None:
    """A fallback carries the definitions' score, variant 'fallback', degraded with reasons."""
    answer = fallback_answer(
        prediction_id="p1",
        entity_id="e1",
        model=definitions.model("other"),
        version=version,
        reasons=reasons,
    )
    assert answer.score == 0.7
    assert answer.model.model_dump() == {"name": "other", "version": shown, "variant": "fallback"}
    assert answer.degraded is True and answer.reasons == reasons
    assert answer.contributions is None


def test_scored_answer_is_degraded_only_with_reasons(
    definitions: Definitions, train: Callable[..., lgb.Booster]
) -> None:
    """A model score is clean unless its features were partial."""
    served = ServedModel(
        "default",
        "3",
        "champion",
        Predictor.from_booster(train(definitions.model("default"))),
        datetime.now(UTC),
    )
    clean = FeatureRow([1.0, 2.0, 3.0], {}, 0.5)
    partial = FeatureRow([1.0, 2.0, math.nan], {}, 0.5, (PARTIAL_FEATURES,))
    a = scored_answer(prediction_id="p", entity_id="e", served=served, score=0.9, features=clean)
    b = scored_answer(prediction_id="p", entity_id="e", served=served, score=0.9, features=partial)
    assert (a.degraded, a.reasons, a.model.version, a.model.variant) == (False, [], "3", "champion")
    assert (b.degraded, b.reasons) == (True, [PARTIAL_FEATURES])


def test_prediction_event_is_keyed_by_prediction_id(definitions: Definitions) -> None:
    """The logged PredictionMade reuses the prediction id as its event id."""
    answer = fallback_answer(
        prediction_id="abc",
        entity_id="e1",
        model=definitions.model("default"),
        version=None,
        reasons=[NO_MODEL],
    )
    event = prediction_event(answer, {"stats.temp_last": 1.0}, datetime.now(UTC))
    assert event.event_id == "abc"
    assert (event.entity_id, event.score, event.reasons) == ("e1", 0.3, [NO_MODEL])
    assert event.features == {"stats.temp_last": 1.0}


def test_bucket_is_stable_and_uniform() -> None:
    """The entity bucket is deterministic, in [0, 1), and spreads entities evenly."""
    buckets = [bucket(f"device-{i}") for i in range(4000)]
    assert buckets == [bucket(f"device-{i}") for i in range(4000)]
    assert all(0 <= b < 1 for b in buckets)
    assert 0.45 < sum(b < 0.5 for b in buckets) / 4000 < 0.55


def test_challenger_gets_its_fraction_only_when_it_exists() -> None:
    """Entities below the fraction go to the challenger, if a challenger is loaded."""
    ids = [f"device-{i}" for i in range(2000)]
    chosen = [choose_variant(e, 0.2, has_challenger=True) for e in ids]
    assert 0.15 < chosen.count("challenger") / len(ids) < 0.25
    assert {choose_variant(e, 0.2, has_challenger=False) for e in ids} == {"champion"}


@pytest.mark.parametrize(
    ("champion", "challenger", "split"),
    [
        (False, False, {"fallback": 1.0}),
        (True, False, {"champion": 1.0}),
        (True, True, {"champion": 0.75, "challenger": 0.25}),
    ],
)
def test_traffic_split(champion: bool, challenger: bool, split: dict[str, float]) -> None:
    """The reported split follows which variants are loaded."""
    assert traffic_split(0.25, has_champion=champion, has_challenger=challenger) == split


def test_prediction_event_built_unvalidated_equals_the_validated_record() -> None:
    """The log record built without validation serialises exactly as a validated one."""
    from datetime import UTC, datetime

    from libs.common.schemas import ModelRef, PredictionMade
    from services.serve.core.predict import prediction_event
    from services.serve.schemas import PredictionAnswer

    answer = PredictionAnswer(
        prediction_id="p-1",
        entity_id="e-1",
        score=0.25,
        model=ModelRef(name="default", version="3", variant="champion"),
        degraded=True,
        reasons=["partial_features"],
        feature_freshness_s=0.5,
        latency_ms=1.0,
    )
    at = datetime(2026, 12, 3, 5, 30, tzinfo=UTC)
    built = prediction_event(answer, {"v.a": 1.0, "v.b": None, "v.c": "x"}, at)
    round_trip = PredictionMade.from_bytes(built.to_bytes())
    assert round_trip == built
    assert round_trip.model_dump() == PredictionMade.model_validate(built.model_dump()).model_dump()
    assert (round_trip.event_id, round_trip.produced_at, round_trip.shadow) == ("p-1", at, False)
