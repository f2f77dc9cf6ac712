"""Retrain integration fixtures: settings with per-test model names on the shared MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.retrain.settings import RetrainSettings

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(name="retrain_settings")
def _retrain_settings(
    make_settings,
    mlflow_uri: str,
    ray_cluster: str,
    unique: str,  # type: ignore[no-untyped-def]
    tmp_path: Path,
):
    """Factory of RetrainSettings on the session's Ray and MLflow, for a definitions file.

    The session shares one MLflow store, so every model gets a per-test name
    (`default_<unique>`): tests never see each other's versions or champions.
    """

    def make(definitions: str = "signalops.yaml", **overrides: Any) -> RetrainSettings:
        data = yaml.safe_load((REPO / definitions).read_text())
        for model in data["models"]:
            model["name"] = f"{model['name']}_{unique}"
        path = tmp_path / f"definitions-{unique}.yaml"
        path.write_text(yaml.safe_dump(data))
        base = make_settings(
            mlflow_tracking_uri=mlflow_uri, ray_address=ray_cluster, definitions=path
        )
        return RetrainSettings.model_validate(
            {
                **base.model_dump(),
                "bootstrap_entities": 30,
                "bootstrap_steps": 80,
                # Tests count rows of the live store; one test turns this on.
                "train_with_bootstrap_history": False,
                **overrides,
            }
        )

    return make
