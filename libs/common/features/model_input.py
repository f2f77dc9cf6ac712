"""How feature vectors become model input rows, the same in training and serving."""

from __future__ import annotations

import math
from collections.abc import Mapping

from libs.common.definitions import ModelDefinition, feature_key


def model_columns(model: ModelDefinition) -> list[str]:
    """Column names, in model input order, of the model's 'view.feature' references."""
    return [feature_key(ref) for ref in model.features]


def to_row(model: ModelDefinition, views: Mapping[str, Mapping[str, float | None]]) -> list[float]:
    """A model input row from view name -> feature values; missing values become NaN."""
    row = []
    for ref in model.features:
        view, _, feat = ref.partition(".")
        v = views.get(view, {}).get(feat)
        row.append(math.nan if v is None else float(v))
    return row
