"""How feature vectors become model input rows, the same in training and serving."""

from __future__ import annotations

import math
from collections.abc import Mapping

from libs.common.definitions import ModelDefinition, feature_key
from libs.common.features.categories import CategoryEncoding

# A feature value as stored and logged: a number, a category (str), or missing (the
# engine's FeatureValue; spelled out here so this module imports no engine).
InputValue = float | str | None


def model_columns(model: ModelDefinition) -> list[str]:
    """Column names, in model input order, of the model's 'view.feature' references."""
    return [feature_key(ref) for ref in model.features]


def input_values(
    model: ModelDefinition, views: Mapping[str, Mapping[str, InputValue]]
) -> list[float | str]:
    """The model's inputs in order, before encoding: numbers as float (missing: NaN),
    categories (str) as they are. What training frames and serve's rows hold.
    """
    row: list[float | str] = []
    for ref in model.features:
        view, _, feat = ref.partition(".")
        v = views.get(view, {}).get(feat)
        row.append(math.nan if v is None else v if isinstance(v, str) else float(v))
    return row


def to_row(
    model: ModelDefinition,
    views: Mapping[str, Mapping[str, InputValue]],
    encoding: CategoryEncoding | None = None,
) -> list[float]:
    """A model input row from view name -> feature values; missing values become NaN.

    Args:
        model: the model definition (input order).
        views: view name -> feature values.
        encoding: the model version's category codes; its categorical columns are
            encoded (an unknown category or a missing value is NaN). None: no
            categorical inputs.

    Raises:
        ValueError: a str value in a column the encoding does not make categorical.
    """
    encoding = encoding or CategoryEncoding()
    row = []
    for column, v in zip(model_columns(model), input_values(model, views), strict=True):
        if column in encoding.categories:
            row.append(encoding.code(column, v))
        elif isinstance(v, str):
            raise ValueError(
                f"feature {column!r} holds the category {v[:80]!r} but no category encoding "
                "covers it; pass the model version's CategoryEncoding"
            )
        else:
            row.append(v)
    return row
