"""Feature math defined once, used by streaming (features) and training (retrain)."""

from libs.common.features.categories import CATEGORIES_FILE, CategoryEncoding, declared_categories
from libs.common.features.engine import FeatureValue, FeatureVector
from libs.common.features.model_input import input_values, model_columns, to_row

__all__ = [
    "CATEGORIES_FILE",
    "CategoryEncoding",
    "FeatureValue",
    "FeatureVector",
    "declared_categories",
    "input_values",
    "model_columns",
    "to_row",
]
