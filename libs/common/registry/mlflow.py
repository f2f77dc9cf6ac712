"""The model registry on MLflow: versions, metrics, aliases, and boosters.

Writers (retrain, the CLI) register LightGBM's own `model.lgb` as a run artifact and
record its sha256 on the version; readers (serve, retrain's champion scoring) load
that file with `lgb.Booster(model_file=...)` after checking the sha256. No MLmodel
flavour loader is used, so no pickle is ever read.

MLflow's client is imported on first use: it costs seconds to import and serve only
needs it in a worker thread.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import lightgbm as lgb
import pandas as pd

from libs.common.errors import RollbackUnavailable, SignalopsError
from libs.common.registry.aliases import (
    CHAMPION,
    EXPERIMENT_PREFIX,
    MODEL_ARTIFACT_DIR,
    MODEL_FILE,
    PREVIOUS_CHAMPION,
    REQUEST_TAG_PREFIX,
    SHA256_TAG,
)
from libs.common.settings import Settings

_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")

COMPANION_FILE = "companion.lgb"  # the version's simpler fallback model, LightGBM text
COMPANION_META = "companion.json"  # its inputs, how they were chosen, its holdout metrics
COMPANION_SHA256_TAG = "companion_sha256"
# Stored files that hold a model: their sha256 is recorded on the version at
# registration, and `read_file` returns them only when they match it.
_CHECKED_FILES = {COMPANION_FILE: COMPANION_SHA256_TAG}


class ModelIntegrityError(SignalopsError):
    """A version's model file is missing or does not match its recorded sha256.

    Operator action: the artifact store was altered; promote another version.
    """


def request_tags(request_ids: Sequence[str]) -> dict[str, str]:
    """Version tags recording which requests (event ids) a version answers."""
    return {f"{REQUEST_TAG_PREFIX}{r}": "1" for r in request_ids}


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
    """What the trainer, serve and the CLI need from a model registry."""

    def register(
        self,
        model: str,
        booster: lgb.Booster,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        example: pd.DataFrame | None = None,
        files: dict[str, str] | None = None,
        version_files: Callable[[str], dict[str, str]] | None = None,
    ) -> str: ...

    def promote(self, model: str, version: str) -> AliasMove: ...

    def rollback(self, model: str) -> AliasMove: ...

    def champion_version(self, model: str) -> str | None: ...

    def list_versions(self, model: str) -> list[VersionInfo]: ...

    def version_metrics(self, model: str, version: str) -> dict[str, float]: ...

    def load_booster(self, model: str, version: str) -> lgb.Booster: ...

    def version_for_request(self, model: str, request_id: str) -> str | None: ...

    def version_of(self, model: str, alias: str) -> str | None: ...

    def read_file(self, model: str, version: str, name: str) -> str | None: ...

    def traffic_settings(self, model: str) -> tuple[float | None, bool]: ...

    def set_traffic_settings(
        self, model: str, fraction: float | None, shadow: bool | None
    ) -> None: ...


# Registered-model tags holding serve's traffic settings per model (durable, shared by
# every replica); an unset fraction means serve's `challenger_fraction` setting.
CHALLENGER_FRACTION_TAG = "signalops.challenger_fraction"
SHADOW_TAG = "signalops.shadow"


class MlflowRegistry:
    """The registry on an MLflow tracking store (SQLite locally, a server in production).

    Every call blocks (network, disk): async callers run them under a resilience
    policy (`Policy.call_blocking`), which adds the timeout and the breaker.

    Args:
        tracking_uri: MLflow tracking and registry URI.
        artifact_root: folder (or URI) under which each model's experiment keeps
            its artifacts; used only when the experiment is created.
    """

    def __init__(self, tracking_uri: str, artifact_root: str) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self._mlflow: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowRegistry:
        return cls(settings.tracking_uri, settings.artifact_root)

    @property
    def _client(self) -> Any:
        if self._mlflow is None:
            from mlflow import MlflowClient

            self._mlflow = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._mlflow

    def _store_missing(self) -> bool:
        # Opening a SQLite URI creates and migrates the database; readers leave that to
        # the writer (retrain), or two processes race on the same migrations.
        if self.tracking_uri.startswith("sqlite:///"):
            return not Path(self.tracking_uri.removeprefix("sqlite:///")).is_file()
        return False

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
        files: dict[str, str] | None = None,
        version_files: Callable[[str], dict[str, str]] | None = None,
    ) -> str:
        """Log a run with params and metrics, and register its booster as a new version.

        The booster is stored as `model/model.lgb` (LightGBM's text format) and its
        sha256 is recorded on the version (tag `model_sha256`).

        Args:
            model: registered model name (the definitions' model name).
            booster: the trained booster.
            params: training parameters to log.
            metrics: holdout metrics to log (NaN values are skipped).
            tags: set on the run and on the new version (e.g. reason, training_rows).
            example: a few input rows; their column order is recorded on the run.
            files: text files stored next to the model (name -> content), e.g. the
                drift reference; read back with `read_file`. A file holding a model
                (`COMPANION_FILE`) has its sha256 recorded on the version too
                (`COMPANION_SHA256_TAG`), like `model.lgb`.
            version_files: files that need the version number (e.g. the model card),
                built from it once MLflow assigned it and stored the same way.

        Returns:
            The new version number, as a string.
        """
        client = self._client
        run = client.create_run(self._experiment_id(model), tags=tags)
        run_id = run.info.run_id
        try:
            for key, value in params.items():
                client.log_param(run_id, key, str(value))
            for key, value in metrics.items():
                if value == value:  # NaN metrics are not logged
                    client.log_metric(run_id, key, float(value))
            with tempfile.TemporaryDirectory(prefix="signalops-model-") as tmp:
                path = Path(tmp) / MODEL_FILE
                booster.save_model(str(path))
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                client.log_artifact(run_id, str(path), artifact_path=MODEL_ARTIFACT_DIR)
                checked: dict[str, str] = {}
                for name, text in (files or {}).items():
                    extra = Path(tmp) / name
                    extra.write_bytes(text.encode())
                    if name in _CHECKED_FILES:
                        checked[_CHECKED_FILES[name]] = hashlib.sha256(text.encode()).hexdigest()
                    client.log_artifact(run_id, str(extra), artifact_path=MODEL_ARTIFACT_DIR)
            if example is not None and not example.empty:
                client.set_tag(run_id, "input_columns", ",".join(map(str, example.columns)))
            client.set_terminated(run_id)
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        self._ensure_registered(model)
        source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_DIR}"
        mv = client.create_model_version(
            model, source, run_id=run_id, tags={**tags, SHA256_TAG: digest, **checked}
        )
        version = str(mv.version)
        if version_files is not None:
            self._store_files(run_id, version_files(version))
        return version

    def _store_files(self, run_id: str, files: dict[str, str]) -> None:
        with tempfile.TemporaryDirectory(prefix="signalops-file-") as tmp:
            for name, text in files.items():
                path = Path(tmp) / name
                path.write_text(text)
                self._client.log_artifact(run_id, str(path), artifact_path=MODEL_ARTIFACT_DIR)

    def _ensure_registered(self, model: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(model)
        except MlflowException as exc:
            if exc.error_code not in _NOT_FOUND:
                raise
            try:
                self._client.create_registered_model(model)
            except MlflowException as again:
                if again.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

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
        from mlflow.exceptions import MlflowException

        try:
            return str(self._client.get_model_version_by_alias(model, alias).version)
        except MlflowException as exc:
            if exc.error_code in _NOT_FOUND or "not found" in str(exc):
                return None
            raise

    def version_of(self, model: str, alias: str) -> str | None:
        """The version `alias` points at; None if the store, model or alias is absent."""
        if self._store_missing():
            return None
        return self._alias(model, alias)

    def champion_version(self, model: str) -> str | None:
        """The version the `champion` alias points at, or None."""
        return self.version_of(model, CHAMPION)

    def version_metrics(self, model: str, version: str) -> dict[str, float]:
        """The metrics logged by the run that produced `version`."""
        mv = self._client.get_model_version(model, str(version))
        if not mv.run_id:
            return {}
        return dict(self._client.get_run(mv.run_id).data.metrics)

    def list_versions(self, model: str) -> list[VersionInfo]:
        """Every version of `model`, newest first, with aliases, metrics and tags."""
        from mlflow.exceptions import MlflowException

        if self._store_missing():
            return []
        try:
            aliases_of: dict[str, list[str]] = {}
            for alias, version in self._client.get_registered_model(model).aliases.items():
                aliases_of.setdefault(str(version), []).append(alias)
        except MlflowException as exc:
            if exc.error_code in _NOT_FOUND:
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

    def version_for_request(self, model: str, request_id: str) -> str | None:
        """The version registered for request `request_id`, if one was (idempotency)."""
        from mlflow.exceptions import MlflowException

        if self._store_missing():
            return None
        key = f"{REQUEST_TAG_PREFIX}{request_id}"
        try:
            versions = self._client.search_model_versions(f"name='{model}'")
        except MlflowException as exc:
            if exc.error_code in _NOT_FOUND:
                return None
            raise
        for mv in versions:
            if key in (mv.tags or {}):
                return str(mv.version)
        return None

    def registered_models(self) -> list[str]:
        """Names of all registered models."""
        if self._store_missing():
            return []
        return sorted(m.name for m in self._client.search_registered_models())

    def read_file(self, model: str, version: str, name: str) -> str | None:
        """A text file stored with a version (`register(files=...)`), or None.

        A file holding a model (`COMPANION_FILE`) is returned only when the version
        records its sha256 and the file matches it; a version recording none (older
        than companions, or not registered by signalops) has none: None.

        Raises:
            ModelIntegrityError: a checked file is missing or does not match its sha256.
        """
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        expected = None
        if name in _CHECKED_FILES:
            tags = self._client.get_model_version(model, str(version)).tags or {}
            expected = tags.get(_CHECKED_FILES[name])
            if expected is None:
                return None
        location = self._client.get_model_version_download_uri(model, str(version))
        with tempfile.TemporaryDirectory(prefix="signalops-file-") as tmp:
            try:
                path = Path(
                    download_artifacts(
                        artifact_uri=f"{location.rstrip('/')}/{name}",
                        dst_path=tmp,
                        tracking_uri=self.tracking_uri,
                    )
                )
                data = path.read_bytes() if path.is_file() else None
            except (MlflowException, OSError):
                data = None
        if expected is not None:
            if data is None:
                raise ModelIntegrityError(f"{model} v{version}: no {name} in {location}")
            digest = hashlib.sha256(data).hexdigest()
            if digest != expected:
                raise ModelIntegrityError(
                    f"{model} v{version}: {name} sha256 {digest} != recorded {expected}"
                )
        return None if data is None else data.decode()

    def traffic_settings(self, model: str) -> tuple[float | None, bool]:
        """The model's (challenger fraction, shadow) tags; (None, False) when unset.

        A fraction tag that is not a number within 0..1 reads as unset.
        """
        from mlflow.exceptions import MlflowException

        if self._store_missing():
            return None, False
        try:
            tags = dict(self._client.get_registered_model(model).tags or {})
        except MlflowException as exc:
            if exc.error_code in _NOT_FOUND:
                return None, False
            raise
        try:
            fraction: float | None = float(tags[CHALLENGER_FRACTION_TAG])
        except (KeyError, ValueError):
            fraction = None
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            fraction = None
        return fraction, tags.get(SHADOW_TAG, "false").lower() == "true"

    def set_traffic_settings(self, model: str, fraction: float | None, shadow: bool | None) -> None:
        """Store the model's challenger fraction and shadow mode; None leaves one as is.

        The registered model is created when it has no version yet, so a split can be
        set before the first version is registered.

        Raises:
            ValueError: the fraction is outside 0..1.
        """
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"challenger fraction must be within 0..1, got {fraction}")
        self._ensure_registered(model)
        if fraction is not None:
            self._client.set_registered_model_tag(model, CHALLENGER_FRACTION_TAG, repr(fraction))
        if shadow is not None:
            self._client.set_registered_model_tag(model, SHADOW_TAG, str(shadow).lower())

    def load_booster(self, model: str, version: str) -> lgb.Booster:
        """The booster of a version (or of an alias such as "champion").

        Reads only `model.lgb`, after checking it against the version's sha256 tag.

        Raises:
            ModelIntegrityError: no such alias, or the file is missing or does not
                match its recorded sha256.
        """
        from mlflow.artifacts import download_artifacts

        if not str(version).isdigit():
            resolved = self._alias(model, str(version))
            if resolved is None:
                raise ModelIntegrityError(f"model {model!r} has no alias {version!r}")
            version = resolved
        mv = self._client.get_model_version(model, str(version))
        expected = (mv.tags or {}).get(SHA256_TAG)
        if expected is None:
            raise ModelIntegrityError(
                f"{model} v{version} records no {SHA256_TAG}; it was not registered by "
                "signalops, so it is not loaded"
            )
        # Resolve the storage location with our client: a `models:/` URI would be
        # resolved against the process-global registry URI (which defaults to
        # ./mlflow.db and would create it).
        location = self._client.get_model_version_download_uri(model, str(version))
        with tempfile.TemporaryDirectory(prefix="signalops-model-") as tmp:
            path = Path(
                download_artifacts(
                    artifact_uri=f"{location.rstrip('/')}/{MODEL_FILE}",
                    dst_path=tmp,
                    tracking_uri=self.tracking_uri,
                )
            )
            if not path.is_file():
                raise ModelIntegrityError(f"{model} v{version}: no {MODEL_FILE} in {location}")
            data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected:
            raise ModelIntegrityError(
                f"{model} v{version}: {MODEL_FILE} sha256 {digest} != recorded {expected}"
            )
        return lgb.Booster(model_str=data.decode())
