"""Feature math defined once, used by streaming (features) and training (retrain)."""

from libs.common.features.aggregations import AGGREGATIONS
from libs.common.features.compute import EventHistory, FeatureVector, compute_view
from libs.common.features.model_input import model_columns, to_row

__all__ = [
    "AGGREGATIONS",
    "EventHistory",
    "FeatureVector",
    "compute_view",
    "model_columns",
    "to_row",
]
