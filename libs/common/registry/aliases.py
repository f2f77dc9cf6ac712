"""Registry names every service agrees on: aliases, the model file and its checksum tag."""

from __future__ import annotations

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"

MODEL_FILE = "model.lgb"  # LightGBM's own text format: never a pickle
MODEL_ARTIFACT_DIR = "model"
SHA256_TAG = "model_sha256"
REQUEST_TAG_PREFIX = "request."
EXPERIMENT_PREFIX = "signalops-"
DRIFT_REFERENCE = "drift_reference.json"  # quantile bins of the training set (monitor)
MODEL_CARD = "model_card.json"  # what a version was trained on, how it scored, why promoted
