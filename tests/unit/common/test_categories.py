"""Category encodings of categorical features: stable order, unknown as missing, stored as JSON."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from libs.common.definitions import parse_definitions
from libs.common.features import CategoryEncoding, declared_categories, input_values, to_row

DEFINITIONS: dict[str, Any] = {
    "sources": [
        {
            "name": "s",
            "entity": "device",
            "fields": {
                "status": {"type": "str", "allowed": ["ok", "warn", "fail"]},
                "zone": {"type": "str"},
                "x": {"type": "float"},
            },
        }
    ],
    "feature_views": [
        {
            "name": "v",
            "source": "s",
            "features": [
                {"name": "status_last", "field": "status", "agg": "last"},
                {"name": "zone_last", "field": "zone", "agg": "last"},
                {"name": "x_last", "field": "x", "agg": "last"},
                {"name": "zone_count", "field": "zone", "agg": "count"},
            ],
        }
    ],
    "models": [
        {"name": "m", "features": ["v.x_last", "v.status_last", "v.zone_last", "v.zone_count"]}
    ],
}


def test_declared_categories_name_the_categorical_columns_with_their_allowed_values() -> None:
    """Only `last` of a str field is categorical; a declared `allowed` list comes along."""
    definitions = parse_definitions(DEFINITIONS)
    assert declared_categories(definitions, definitions.model("m")) == {
        "v__status_last": ("ok", "warn", "fail"),
        "v__zone_last": None,
    }


def test_the_declared_order_wins_and_undeclared_categories_are_sorted() -> None:
    """Allowed values keep their declared order (even unseen ones); others sort what was seen."""
    frame = pd.DataFrame(
        {"status": ["fail", "ok", None], "zone": ["north", "east", "north"]}, dtype=object
    )
    encoding = CategoryEncoding.fit(frame, {"status": ["ok", "warn", "fail"], "zone": None})
    assert encoding.categories == {"status": ("ok", "warn", "fail"), "zone": ("east", "north")}
    np.testing.assert_array_equal(encoding.encode_column("status", frame["status"]), [2, 0, np.nan])
    np.testing.assert_array_equal(encoding.encode_column("zone", frame["zone"]), [1, 0, 1])


@pytest.mark.parametrize("value", ["south", None, math.nan, 3.0, ""])
def test_an_unknown_or_missing_category_is_nan(value: object) -> None:
    """A category the encoding does not hold, or no value at all, is LightGBM's missing."""
    encoding = CategoryEncoding({"zone": ("east", "north")})
    assert math.isnan(encoding.code("zone", value))
    assert math.isnan(encoding.encode_column("zone", [value])[0])
    assert math.isnan(encoding.encode_rows([[1.0, value]], ["x", "zone"])[0, 1])


def test_the_encoding_round_trips_through_json() -> None:
    """What is stored with a version reads back equal; no file (None) is no categories."""
    encoding = CategoryEncoding({"status": ("ok", "warn", "fail"), "zone": ()})
    assert CategoryEncoding.from_json(encoding.to_json()) == encoding
    assert CategoryEncoding.from_json(None) == CategoryEncoding()


def test_rows_encode_categories_and_keep_numbers() -> None:
    """encode_rows, encode_frame and to_row agree: numbers unchanged, categories as codes."""
    definitions = parse_definitions(DEFINITIONS)
    model = definitions.model("m")
    encoding = CategoryEncoding({"v__status_last": ("ok", "warn", "fail"), "v__zone_last": ("a",)})
    views: dict[str, dict[str, float | str | None]] = {
        "v": {"x_last": 1.5, "status_last": "warn", "zone_last": "b", "zone_count": 4.0}
    }
    raw = input_values(model, views)
    assert raw == [1.5, "warn", "b", 4.0]
    row = to_row(model, views, encoding)
    assert row[:2] == [1.5, 1.0] and math.isnan(row[2]) and row[3] == 4.0
    columns = ["v__x_last", "v__status_last", "v__zone_last", "v__zone_count"]
    np.testing.assert_array_equal(encoding.encode_rows([raw], columns)[0], row)
    frame = pd.DataFrame([raw], columns=columns)
    np.testing.assert_array_equal(encoding.matrix(frame, columns)[0], row)


def test_to_row_refuses_a_category_without_an_encoding() -> None:
    """A str never reaches float(): without the version's encoding the error says what to pass."""
    model = parse_definitions(DEFINITIONS).model("m")
    with pytest.raises(ValueError, match="no category encoding covers it"):
        to_row(model, {"v": {"status_last": "ok"}})
