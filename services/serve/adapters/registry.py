"""MLflow model registry adapter: which version an alias names, and its booster.

mlflow is imported on first use: it costs seconds to import and the replica only
needs it in a worker thread.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightgbm as lgb

from services.serve.core.predict import MODEL_FILE

CHAMPION = "champion"
CHALLENGER = "challenger"


class MlflowModelSource:
    """Reads the registry at `tracking_uri` (the registry lives in the same store).

    Every call blocks; the service runs them with asyncio.to_thread.
    """

    def __init__(self, tracking_uri: str) -> None:
        self._uri = tracking_uri
        self._client: Any = None

    def _store_missing(self) -> bool:
        # Opening a SQLite URI creates and migrates the database; leave that to the
        # writer (retrain), or two processes race on the same migrations.
        if self._uri.startswith("sqlite:///"):
            return not Path(self._uri.removeprefix("sqlite:///")).is_file()
        return False

    def _mlflow(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self._uri, registry_uri=self._uri)
        return self._client

    def version_of(self, name: str, alias: str) -> str | None:
        """The version `alias` points at; None if the store, model or alias is absent."""
        if self._store_missing():
            return None
        from mlflow.exceptions import MlflowException

        try:
            return str(self._mlflow().get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc):
                return None
            raise

    def load(self, name: str, version: str) -> lgb.Booster:
        """Download one version's artifacts and read its `model.lgb` (no pickle)."""
        from mlflow.artifacts import download_artifacts

        # Resolve the storage location with our client: a `models:/` URI would be
        # resolved against the process-global registry URI, whatever was passed
        # (mlflow's ModelsArtifactRepository._get_model_uri_infos), which defaults
        # to ./mlflow.db and would create it.
        location = self._mlflow().get_model_version_download_uri(name, version)
        with tempfile.TemporaryDirectory(prefix="signalops-model-") as tmp:
            path = download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=self._uri)
            return lgb.Booster(model_file=str(Path(path) / MODEL_FILE))

    def load_champion(self, name: str) -> tuple[str, lgb.Booster] | None:
        """(version, booster) of the champion of `name`, None if it has none yet."""
        version = self.version_of(name, CHAMPION)
        if version is None:
            return None
        return version, self.load(name, version)
