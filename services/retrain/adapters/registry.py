"""The model registry: MLflow versions, metrics and the champion alias.

Serve loads `models:/{name}@champion` (LightGBM's own `model.lgb`, no pickle), with
inputs named `model_columns(model_def)` in order. The CLI (`signalops models ...`)
calls `list_versions`, `promote`, `rollback` and `champion_version` on a
`MlflowRegistry.from_settings(settings)`.

Global state department: MLflow's fluent API (`start_run`, `log_model`) reads a
process-wide tracking URI; `register` sets it to this registry's URI each time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import lightgbm as lgb
import mlflow
import mlflow.lightgbm
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from libs.common.settings import Settings
from services.retrain.core.events import CHAMPION
from services.retrain.errors import RollbackUnavailable

PREVIOUS_CHAMPION = "previous_champion"
EXPERIMENT_PREFIX = "signalops-"


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as `signalops models list` shows it."""

    model: str
    version: str
    aliases: tuple[str, ...]
    metrics: dict[str, float]
    tags: dict[str, str]
    created: datetime
    run_id: str | None


@dataclass(frozen=True)
class AliasMove:
    """The outcome of promote/rollback: `version` is champion now, `previous` was before."""

    model: str
    version: str
    previous: str | None
    metrics: dict[str, float] = field(default_factory=dict)


class Registry(Protocol):
    """What the trainer and the CLI need from a model registry."""

    def register(
        self,
        model: str,
        booster: lgb.Booster,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        example: pd.DataFrame | None = None,
    ) -> str: ...

    def promote(self, model: str, version: str) -> AliasMove: ...

    def rollback(self, model: str) -> AliasMove: ...

    def champion_version(self, model: str) -> str | None: ...

    def list_versions(self, model: str) -> list[VersionInfo]: ...

    def version_metrics(self, model: str, version: str) -> dict[str, float]: ...

    def load_booster(self, model: str, version: str) -> lgb.Booster: ...


class MlflowRegistry:
    """The registry on an MLflow tracking store (SQLite locally, a server in production).

    Args:
        tracking_uri: MLflow tracking and registry URI.
        artifact_root: folder (or URI) under which each model's experiment keeps
            its artifacts; used only when the experiment is created.
    """

    def __init__(self, tracking_uri: str, artifact_root: str) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowRegistry:
        return cls(settings.tracking_uri, settings.artifact_root)

    # writing ----------------------------------------------------------------------
    def _experiment_id(self, model: str) -> str:
        name = f"{EXPERIMENT_PREFIX}{model}"
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        root = self.artifact_root
        if "://" in root:
            location = f"{root.rstrip('/')}/{name}"
        else:
            location = Path(root, name).resolve().as_uri()
        return str(self._client.create_experiment(name, artifact_location=location))

    def register(
        self,
        model: str,
        booster: lgb.Booster,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        example: pd.DataFrame | None = None,
    ) -> str:
        """Log a run with params and metrics, and register its booster as a new version.

        Args:
            model: registered model name (the definitions' model name).
            booster: the trained booster, stored in LightGBM's own format.
            params: training parameters to log.
            metrics: holdout metrics to log (NaN values are skipped).
            tags: set on the run and on the new version (e.g. reason, training_rows).
            example: a few input rows, to record the input signature (column order).

        Returns:
            The new version number, as a string.
        """
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        signature = None
        if example is not None and not example.empty:
            signature = infer_signature(example, booster.predict(example.to_numpy()))
        with mlflow.start_run(experiment_id=self._experiment_id(model), tags=tags):
            mlflow.log_params({k: str(v) for k, v in params.items()})
            mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})
            info = mlflow.lightgbm.log_model(
                booster,
                name="model",
                registered_model_name=model,
                signature=signature,
                # Explicit requirements: inferring them costs about 3 s per version.
                pip_requirements=[f"lightgbm=={lgb.__version__}"],
            )
        version = str(info.registered_model_version)
        for key, value in tags.items():
            self._client.set_model_version_tag(model, version, key, value)
        return version

    def promote(self, model: str, version: str) -> AliasMove:
        """Make `version` the champion; the old champion becomes `previous_champion`.

        Promoting the current champion again changes nothing.
        """
        version = str(version)
        self._client.get_model_version(model, version)  # raises if there is no such version
        previous = self.champion_version(model)
        if previous is not None and previous != version:
            self._client.set_registered_model_alias(model, PREVIOUS_CHAMPION, previous)
        self._client.set_registered_model_alias(model, CHAMPION, version)
        return AliasMove(model, version, previous, self.version_metrics(model, version))

    def rollback(self, model: str) -> AliasMove:
        """Swap champion and previous champion (a second rollback undoes the first).

        Raises:
            RollbackUnavailable: no previous champion is recorded.
        """
        previous = self._alias(model, PREVIOUS_CHAMPION)
        if previous is None:
            raise RollbackUnavailable(
                f"model {model!r} has no {PREVIOUS_CHAMPION!r} alias to roll back to; "
                f"promote a version explicitly"
            )
        current = self.champion_version(model)
        self._client.set_registered_model_alias(model, CHAMPION, previous)
        if current is not None and current != previous:
            self._client.set_registered_model_alias(model, PREVIOUS_CHAMPION, current)
        return AliasMove(model, previous, current, self.version_metrics(model, previous))

    # reading ----------------------------------------------------------------------
    def _alias(self, model: str, alias: str) -> str | None:
        try:
            return str(self._client.get_model_version_by_alias(model, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def champion_version(self, model: str) -> str | None:
        """The version the `champion` alias points at, or None."""
        return self._alias(model, CHAMPION)

    def version_metrics(self, model: str, version: str) -> dict[str, float]:
        """The metrics logged by the run that produced `version`."""
        mv = self._client.get_model_version(model, str(version))
        if not mv.run_id:
            return {}
        return dict(self._client.get_run(mv.run_id).data.metrics)

    def list_versions(self, model: str) -> list[VersionInfo]:
        """Every version of `model`, newest first, with aliases, metrics and tags."""
        try:
            aliases_of: dict[str, list[str]] = {}
            for alias, version in self._client.get_registered_model(model).aliases.items():
                aliases_of.setdefault(str(version), []).append(alias)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise
        out = []
        for mv in self._client.search_model_versions(f"name='{model}'"):
            metrics = dict(self._client.get_run(mv.run_id).data.metrics) if mv.run_id else {}
            out.append(
                VersionInfo(
                    model=model,
                    version=str(mv.version),
                    aliases=tuple(sorted(aliases_of.get(str(mv.version), []))),
                    metrics=metrics,
                    tags=dict(mv.tags),
                    created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
                    run_id=mv.run_id,
                )
            )
        return sorted(out, key=lambda v: int(v.version), reverse=True)

    def registered_models(self) -> list[str]:
        """Names of all registered models."""
        return sorted(m.name for m in self._client.search_registered_models())

    def load_booster(self, model: str, version: str) -> lgb.Booster:
        """The booster of a version (`version` may also be an alias such as "champion")."""
        ref = f"@{version}" if not str(version).isdigit() else f"/{version}"
        mlflow.set_registry_uri(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.lightgbm.load_model(f"models:/{model}{ref}")
