"""Serving a categorical feature: a str value is encoded through the version's stored codes."""

from __future__ import annotations

import time
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from libs.common.clients.redis import StoredVector
from libs.common.definitions import Definitions, parse_definitions
from libs.common.features import CATEGORIES_FILE, CategoryEncoding, model_columns
from services.serve.adapters.memory import MemoryModelSource
from services.serve.catalog import ModelCatalog
from services.serve.core.predict import ServedModel, assemble_features

DEFINITIONS: dict[str, Any] = {
    "sources": [
        {
            "name": "sensors",
            "entity": "device",
            "fields": {
                "temp": {"type": "float"},
                "status": {"type": "str", "allowed": ["ok", "warn", "fail"]},
            },
        }
    ],
    "feature_views": [
        {
            "name": "stats",
            "source": "sensors",
            "features": [
                {"name": "temp_last", "field": "temp", "agg": "last"},
                {"name": "status_last", "field": "status", "agg": "last"},
            ],
        }
    ],
    "models": [{"name": "default", "features": ["stats.temp_last", "stats.status_last"]}],
}
ENCODING = CategoryEncoding({"stats__status_last": ("ok", "warn", "fail")})


def vector(values: dict[str, float | str | None]) -> StoredVector:
    now = time.time()
    return StoredVector(values=values, as_of=now - 1.0, updated_at=now - 1.0)


@pytest.fixture(name="definitions")
def _definitions() -> Definitions:
    return parse_definitions(DEFINITIONS)


def _booster(definitions: Definitions) -> lgb.Booster:
    """A booster that learned: status 'fail' (code 2) means label 1."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, 600).astype("float64")
    x = np.column_stack([rng.normal(size=600), codes])
    y = (codes == 2).astype(int)
    columns = model_columns(definitions.model("default"))
    return lgb.train(
        {"objective": "binary", "verbose": -1, "min_data_per_group": 5, "num_threads": 1},
        lgb.Dataset(x, y, feature_name=columns, categorical_feature=["stats__status_last"]),
        num_boost_round=10,
    )


async def _served(definitions: Definitions, files: dict[str, str]) -> tuple[ModelCatalog, Any]:
    models = MemoryModelSource()
    models.register("default", "1", _booster(definitions), files=files)
    catalog = ModelCatalog(definitions, models, challenger_fraction=0.0)
    await catalog.refresh("default")
    return catalog, catalog.slot("default").champion


async def test_a_category_is_encoded_through_the_versions_codes(definitions: Definitions) -> None:
    """The loaded version carries its categories.json; a str input scores by its code."""
    _, served = await _served(definitions, {CATEGORIES_FILE: ENCODING.to_json()})
    assert isinstance(served, ServedModel)
    assert served.predictor.encoding == ENCODING
    model = definitions.model("default")

    def answer(status: str | None) -> tuple[float, Any]:
        row = assemble_features(
            model, {"stats": vector({"temp_last": 0.1, "status_last": status})}, None, time.time()
        )
        assert row is not None
        return float(served.predictor.predict([row.row])[0]), row

    fail, row = answer("fail")
    ok, _ = answer("ok")
    assert fail > 0.7 > 0.3 > ok
    # The row and the prediction log keep the category as str; the answer is not degraded.
    assert row.row == [0.1, "fail"] and row.features["stats.status_last"] == "fail"
    assert row.reasons == ()
    # A category unseen at training is answered as missing, by the model.
    unseen, unseen_row = answer("melting")
    missing, _ = answer(None)
    assert unseen == missing and unseen_row.reasons == ()
    # Explanations encode the same way.
    contributions = served.predictor.contributions([row.row], model.features)[0]
    assert contributions["stats.status_last"] > 0


async def test_a_version_without_its_codes_is_not_served(definitions: Definitions) -> None:
    """A categorical model whose version stored no categories.json fails to load (and says why)."""
    catalog, served = await _served(definitions, {})
    assert served is None
    assert "encodes categories of []" in catalog.status()["default"]
