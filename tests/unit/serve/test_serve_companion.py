"""The companion model as serve's first fallback: when it answers, and what the answer says."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import lightgbm as lgb
import numpy as np
import pytest

from libs.common.definitions import Definitions
from libs.common.registry.mlflow import COMPANION_FILE
from services.serve.core.companion import (
    ModelTimeout,
    companion_predictor,
    predict_within,
    prefers_companion,
)
from services.serve.core.predict import (
    PARTIAL_FEATURES,
    FeatureRow,
    PredictBudget,
    Predictor,
    ServedModel,
)
from services.serve.errors import ModelMismatch

COMPANION_COLUMNS = ["stats__temp_last", "stats__vib_last"]


def companion_booster(seed: int = 1) -> lgb.Booster:
    """A few-tree booster over two of the default model's three inputs."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 2))
    y = (x[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 7, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(x, y, feature_name=COMPANION_COLUMNS), num_boost_round=5)


class FakeBooster:
    """Stands in for a booster whose predict raises, or blocks until released."""

    def __init__(self, columns: list[str], *, fail: bool = False) -> None:
        self.columns, self.fail = columns, fail
        self.release = threading.Event()
        self.calls = 0

    def feature_name(self) -> list[str]:
        return self.columns

    def predict(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        self.calls += 1
        if self.fail:
            raise RuntimeError("booster exploded")
        self.release.wait(timeout=30)  # a stuck model until the test lets it go
        return np.full(len(x), 0.99)


async def _harness(
    make_harness: Any,
    definitions: Definitions,
    main: Any,
    *,
    companion: str | None,
    **settings: Any,
) -> Any:
    h = await make_harness(register=False, **settings)
    files = {COMPANION_FILE: companion} if companion is not None else {}
    h.models.register("default", "1", cast(lgb.Booster, main), files=files)
    await h.service.catalog.refresh_all()
    await h.put("e1", "stats", {"temp_last": 1.2, "vib_last": -0.3})
    await h.put("e1", "hourly", {"temp_max": 2.0})
    return h


def _companion_score(temp: float, vib: float) -> float:
    return float(companion_booster().predict(np.array([[temp, vib]]))[0])


# ---- pure decisions ---------------------------------------------------------------


def _served(companion: Predictor | None) -> ServedModel:
    main = Predictor(
        train_booster_like(), ["stats__temp_last", "stats__vib_last", "hourly__temp_max"]
    )
    return ServedModel("default", "1", "champion", main, datetime.now(UTC), companion=companion)


def train_booster_like() -> lgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    return lgb.train(
        {"objective": "binary", "verbose": -1},
        lgb.Dataset(x, (x[:, 0] > 0).astype(int), feature_name=["a", "b", "c"]),
        num_boost_round=2,
    )


@pytest.mark.parametrize(
    ("row", "reasons", "with_companion", "prefers"),
    [
        ([1.0, 2.0, math.nan], (PARTIAL_FEATURES,), True, True),  # its inputs all there
        ([1.0, math.nan, math.nan], (PARTIAL_FEATURES,), True, False),  # one of its own missing
        ([1.0, 2.0, 3.0], (), True, False),  # complete: the main model answers
        ([1.0, 2.0, math.nan], (PARTIAL_FEATURES,), False, False),  # no companion
    ],
)
def test_companion_takes_partial_rows_only_when_its_own_inputs_are_there(
    row: list[float], reasons: tuple[str, ...], with_companion: bool, prefers: bool
) -> None:
    """Partial main inputs with every companion input present go to the companion."""
    companion = Predictor(companion_booster(), COMPANION_COLUMNS) if with_companion else None
    features = FeatureRow(cast(list[float | str], row), {}, 0.0, reasons)
    assert prefers_companion(_served(companion), features) is prefers


def test_a_companion_reading_foreign_inputs_is_refused() -> None:
    """A companion file whose inputs the main model does not have is not served."""
    main = Predictor(train_booster_like(), ["x__only"])
    with pytest.raises(ModelMismatch, match="stats__temp_last"):
        companion_predictor(companion_booster().model_to_string(), main)


async def test_budget_moves_a_slow_model_off_the_loop_and_bounds_stuck_calls() -> None:
    """A new version runs off the loop; past its budget it times out, and while
    `max_overdue` calls are stuck the next is refused at once."""
    budget = PredictBudget()
    assert await predict_within(budget, lambda: 1, budget_s=5.0, max_overdue=1, offload=False) == 1
    assert budget.inline  # answered within budget off the loop: inline from now on
    release = threading.Event()
    budget.inline = False
    with pytest.raises(ModelTimeout):
        await predict_within(
            budget, lambda: release.wait(30), budget_s=0.01, max_overdue=1, offload=False
        )
    assert (budget.inline, budget.overdue) == (False, 1)
    calls = []
    with pytest.raises(ModelTimeout, match="still running"):
        await predict_within(
            budget, lambda: calls.append(1), budget_s=5.0, max_overdue=1, offload=False
        )
    assert calls == []  # refused without running
    release.set()
    for _ in range(500):  # the stuck thread finishes: its slot frees
        if budget.overdue == 0:
            break
        await asyncio.sleep(0.01)
    assert budget.overdue == 0


# ---- answers through the service --------------------------------------------------


async def test_failing_model_is_answered_by_the_companion(
    make_harness: Any, definitions: Definitions
) -> None:
    """The main model raises: the companion answers, degraded, variant fallback, HTTP 200."""
    main = FakeBooster(["stats__temp_last", "stats__vib_last", "hourly__temp_max"], fail=True)
    h = await _harness(
        make_harness, definitions, main, companion=companion_booster().model_to_string()
    )
    r = await h.client.post("/v1/predict", json={"entity_id": "e1"})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == {"name": "default", "version": "1", "variant": "fallback"}
    assert body["degraded"] is True
    assert body["reasons"] == ["model_failed", "companion"]
    assert body["score"] == pytest.approx(_companion_score(1.2, -0.3))
    # The prediction log says who answered, with the inputs used.
    logged = h.log.records[-1][1]
    assert logged.model.variant == "fallback" and logged.reasons == ["model_failed", "companion"]
    assert logged.features["stats.temp_last"] == 1.2


async def test_slow_model_is_answered_by_the_companion_within_budget(
    make_harness: Any, definitions: Definitions
) -> None:
    """A main model stuck past serve_model_timeout_ms: the companion answers meanwhile."""
    main = FakeBooster(["stats__temp_last", "stats__vib_last", "hourly__temp_max"])
    h = await _harness(
        make_harness,
        definitions,
        main,
        companion=companion_booster().model_to_string(),
        serve_model_timeout_ms=20,
    )
    try:
        r = await h.client.post("/v1/predict", json={"entity_id": "e1"})
        assert r.status_code == 200
        assert r.json()["reasons"] == ["model_timeout", "companion"]
        assert r.json()["model"]["variant"] == "fallback"
        # Batch calls too: every row of the stuck call gets the companion's answer.
        r = await h.client.post(
            "/v1/predict/batch", json={"requests": [{"entity_id": "e1"}, {"entity_id": "e1"}]}
        )
        assert [p["reasons"] for p in r.json()["predictions"]] == [
            ["model_timeout", "companion"]
        ] * 2
    finally:
        main.release.set()


async def test_partial_features_go_to_the_companion_without_asking_the_main_model(
    make_harness: Any, definitions: Definitions
) -> None:
    """A view missing for the main model while the companion's inputs are there."""
    main = FakeBooster(["stats__temp_last", "stats__vib_last", "hourly__temp_max"], fail=True)
    h = await _harness(
        make_harness, definitions, main, companion=companion_booster().model_to_string()
    )
    await h.put("e2", "stats", {"temp_last": -0.5, "vib_last": 0.4})  # no hourly view
    r = await h.client.post("/v1/predict?explain=true", json={"entity_id": "e2"})
    body = r.json()
    assert body["reasons"] == ["partial_features", "companion"]
    assert body["score"] == pytest.approx(_companion_score(-0.5, 0.4))
    assert main.calls == 0
    # Contributions are the companion's, over its own inputs.
    assert set(body["contributions"]) == {"stats.temp_last", "stats.vib_last", "bias"}


async def test_partial_features_the_companion_lacks_stay_with_the_main_model(
    make_harness: Any, definitions: Definitions, train: Callable[..., lgb.Booster]
) -> None:
    """The companion does not answer rows missing its own inputs: the champion does."""
    booster = train(definitions.model("default"))
    h = await _harness(
        make_harness, definitions, booster, companion=companion_booster().model_to_string()
    )
    await h.put("e3", "hourly", {"temp_max": 2.0})  # the companion's view is missing
    body = (await h.client.post("/v1/predict", json={"entity_id": "e3"})).json()
    assert body["model"]["variant"] == "champion"
    assert body["reasons"] == ["partial_features"]
    # With every input there the champion answers, undegraded.
    body = (await h.client.post("/v1/predict", json={"entity_id": "e1"})).json()
    assert (body["model"]["variant"], body["degraded"]) == ("champion", False)


@pytest.mark.parametrize(
    ("companion", "reasons"),
    [
        (None, ["model_failed"]),  # a version without a companion (older)
        ("not a lightgbm model", ["model_failed"]),  # an unusable one is left out
    ],
)
async def test_the_prior_answers_only_when_no_companion_can(
    make_harness: Any,
    definitions: Definitions,
    companion: str | None,
    reasons: list[str],
) -> None:
    """Without a usable companion, a failing model is answered by the constant prior."""
    main = FakeBooster(["stats__temp_last", "stats__vib_last", "hourly__temp_max"], fail=True)
    h = await _harness(make_harness, definitions, main, companion=companion)
    assert h.service.catalog.slot("default").champion is not None
    assert h.service.catalog.slot("default").champion.companion is None  # type: ignore[union-attr]
    r = await h.client.post("/v1/predict", json={"entity_id": "e1"})
    assert r.status_code == 200
    body = r.json()
    assert body["score"] == 0.3  # the definitions' fallback.score
    assert body["reasons"] == reasons
    assert body["model"] == {"name": "default", "version": "1", "variant": "fallback"}


async def test_companion_failing_too_gives_the_prior(
    make_harness: Any, definitions: Definitions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Main model and companion both raise: the prior, naming both failures; no 5xx."""
    main = FakeBooster(["stats__temp_last", "stats__vib_last", "hourly__temp_max"], fail=True)
    h = await _harness(
        make_harness, definitions, main, companion=companion_booster().model_to_string()
    )
    served = h.service.catalog.slot("default").champion
    assert served is not None and served.companion is not None

    def explode(*args: Any, **kwargs: Any) -> np.ndarray:
        raise RuntimeError("companion exploded")

    monkeypatch.setattr(served.companion, "predict", explode)
    r = await h.client.post("/v1/predict", json={"entity_id": "e1"})
    assert r.status_code == 200
    assert r.json()["reasons"] == ["model_failed", "companion_failed"]
    assert r.json()["score"] == 0.3


async def test_cold_start_is_still_the_prior(
    make_harness: Any, definitions: Definitions, train: Callable[..., lgb.Booster]
) -> None:
    """No features at all: nothing for either model to read, the prior answers."""
    h = await _harness(
        make_harness,
        definitions,
        train(definitions.model("default")),
        companion=companion_booster().model_to_string(),
    )
    body = (await h.client.post("/v1/predict", json={"entity_id": "nobody"})).json()
    assert (body["score"], body["reasons"]) == (0.3, ["no_features"])
