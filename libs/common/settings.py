"""Settings every service shares: where the broker, Redis, Ray and MLflow live.

Defaults describe the embedded local stack started by `signalops up`; every value
can be overridden with a `SIGNALOPS_` environment variable (nested: `__`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Topics(BaseModel):
    """Topic names (DESIGN.md "Topics"); names are configuration."""

    raw: str = "signals.raw"
    valid: str = "signals.valid"
    dlq: str = "signals.dlq"
    outcomes: str = "outcomes"
    predictions: str = "predictions"
    drift: str = "drift.events"
    retrain: str = "retrain.requests"
    models: str = "models.events"

    def all(self) -> list[str]:
        return list(self.model_dump().values())


class Settings(BaseSettings):
    """One settings object, built once in each entry module and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="SIGNALOPS_", env_nested_delimiter="__", extra="ignore"
    )

    environment: str = Field("development", description="development | production")
    data_dir: Path = Path(".signalops")
    definitions: Path = Path("signalops.yaml")

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_partitions: int = 4
    topics: Topics = Topics()

    redis_url: str = "redis://127.0.0.1:6379/0"

    ray_address: str = "auto"
    ray_head_port: int = 6380
    ray_dashboard_port: int = 8265
    ray_object_store_mb: int = 128
    # HAProxy's own ports bind all interfaces (RAY_NOTES.md): moved off the defaults.
    haproxy_metrics_port: int = 9111
    haproxy_stats_port: int = 8414

    mlflow_tracking_uri: str | None = Field(
        None, description="Defaults to a SQLite store in the data directory."
    )

    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8100
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    metrics_host: str = Field("127.0.0.1", description="Bind address of /metrics servers.")
    features_metrics_port: int = 8101
    retrain_metrics_port: int = 8102

    admin_token: SecretStr = SecretStr("dev-admin-token")
    otlp_endpoint: str | None = None
    log_level: str = "INFO"

    # Calls to other systems: timeouts in seconds (retries and breakers wrap them).
    call_timeout_s: float = 2.0

    @field_validator("admin_token")
    @classmethod
    def _no_placeholder_token_in_production(cls, v: SecretStr, info: object) -> SecretStr:
        data = getattr(info, "data", {}) or {}
        if data.get("environment") == "production" and v.get_secret_value() == "dev-admin-token":
            raise ValueError(
                "SIGNALOPS_ADMIN_TOKEN is the development placeholder; set a real token "
                "when SIGNALOPS_ENVIRONMENT=production"
            )
        return v

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.data_dir.resolve() / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return str((self.data_dir / "mlartifacts").resolve())

    @property
    def offline_dir(self) -> Path:
        return self.data_dir / "offline"
