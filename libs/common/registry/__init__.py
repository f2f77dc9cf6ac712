"""The one model-registry client, shared by serve and retrain (MLflow underneath).

Models are stored and loaded only as LightGBM's text file, checked against the
sha256 recorded on the version; no pickle-capable loader is ever used.
"""

from libs.common.registry.aliases import (
    CHALLENGER,
    CHAMPION,
    DRIFT_REFERENCE,
    MODEL_FILE,
    PREVIOUS_CHAMPION,
)
from libs.common.registry.mlflow import (
    AliasMove,
    MlflowRegistry,
    ModelIntegrityError,
    Registry,
    VersionInfo,
    request_tags,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "DRIFT_REFERENCE",
    "MODEL_FILE",
    "PREVIOUS_CHAMPION",
    "AliasMove",
    "MlflowRegistry",
    "ModelIntegrityError",
    "Registry",
    "VersionInfo",
    "request_tags",
]
