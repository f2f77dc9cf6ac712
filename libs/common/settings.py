"""Settings every service shares: where the broker, Redis, Ray and MLflow live.

Defaults describe the embedded local stack started by `signalops up`; every value
can be overridden with a `SIGNALOPS_` environment variable (nested: `__`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, PositiveFloat, PositiveInt, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_ADMIN_TOKEN = "dev-admin-token"  # accepted only when environment is development


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
    schema_events: str = "schema.events"

    def all(self) -> list[str]:
        return list(self.model_dump().values())


Scope = Literal["predict", "admin"]


def _predict_only() -> list[Scope]:
    return ["predict"]


class ApiKeyConfig(BaseModel):
    """One API key: its secret, what it may do, and its rate limit (none: unlimited)."""

    key: SecretStr = Field(min_length=16, description="The secret; at least 16 characters.")
    scopes: list[Scope] = Field(default_factory=_predict_only, min_length=1)
    rate_per_s: PositiveFloat | None = Field(None, description="Sustained requests per second.")
    burst: PositiveInt | None = Field(None, description="Requests allowed at once; default 1 s.")


class Settings(BaseSettings):
    """One settings object, built once in each entry module and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="SIGNALOPS_", env_nested_delimiter="__", extra="ignore"
    )

    environment: Literal["development", "production"] = Field(
        "development", description="development | production; anything else is refused"
    )
    data_dir: Path = Path(".signalops")
    definitions: Path = Path("signalops.yaml")

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_partitions: int = Field(4, ge=1)
    # None: 1 in development (one embedded broker), 3 and 2 in production.
    kafka_replication_factor: int | None = Field(None, ge=1)
    kafka_min_insync_replicas: int | None = Field(None, ge=1)
    # Largest record batch a producer builds per partition. 256 KiB, not aiokafka's
    # 16 KiB: a produce round trip then carries about 16x the records, which took a
    # bare produce from ~34,000 to ~47,000 records/s here (docs/benchmarks.md, issue 9).
    kafka_batch_bytes: int = Field(262_144, ge=16_384, le=1_048_576)
    # The consume loop: attempts of a failing record before it is dead-lettered, and
    # the session/poll limits of consumer groups.
    consumer_max_attempts: int = Field(5, ge=1)
    consumer_session_timeout_ms: int = Field(10000, ge=1000)
    consumer_max_poll_interval_ms: int = Field(300000, ge=1000)
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

    admin_token: SecretStr = SecretStr(DEV_ADMIN_TOKEN)
    # ---- edge security (libs/common/security.py, ratelimit.py, http.py) ----
    # Secrets never travel in dumps (exclude=True): a Serve replica reads them from
    # its node's environment, like the admin token.
    api_keys: dict[str, ApiKeyConfig] = Field(
        default_factory=dict,
        exclude=True,
        description='JSON {"name": {"key": "...", "scopes": ["predict"], "rate_per_s": 50}}.',
    )
    api_key: SecretStr | None = Field(
        None, exclude=True, description="The key the CLI presents; default the admin token."
    )
    api_keys_file: Path | None = Field(
        None, description="YAML or JSON file of the same shape (a mounted Kubernetes Secret)."
    )
    require_predict_key: bool | None = Field(
        None,
        description="Predict and features endpoints need a key with the predict scope; "
        "None: false in development, true otherwise.",
    )
    rate_limit_timeout_s: float = Field(
        0.05, gt=0, description="Budget of one rate-limit check in Redis; past it, allowed."
    )
    serve_max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request body serve reads (else 413)."
    )
    otlp_endpoint: str | None = None
    log_level: str = "INFO"

    # Calls to other systems: timeouts in seconds (retries and breakers wrap them).
    call_timeout_s: float = 2.0

    @model_validator(mode="after")
    def _no_placeholder_token_outside_development(self) -> Self:
        if self.environment != "development" and (
            self.admin_token.get_secret_value() == DEV_ADMIN_TOKEN
        ):
            raise ValueError(
                "SIGNALOPS_ADMIN_TOKEN is the development placeholder; set a real token "
                f"when SIGNALOPS_ENVIRONMENT={self.environment}"
            )
        return self

    @model_validator(mode="after")
    def _predict_key_follows_the_environment(self) -> Self:
        # Open in development (demo, benches, tests run keyless); closed elsewhere.
        if self.require_predict_key is None:
            self.require_predict_key = self.environment != "development"
        return self

    @property
    def predict_key_required(self) -> bool:
        """Whether predict and features calls need a key with the predict scope."""
        return bool(self.require_predict_key)

    @property
    def replication_factor(self) -> int:
        if self.kafka_replication_factor is not None:
            return self.kafka_replication_factor
        return 1 if self.environment == "development" else 3

    @property
    def min_insync_replicas(self) -> int:
        if self.kafka_min_insync_replicas is not None:
            return self.kafka_min_insync_replicas
        return 1 if self.environment == "development" else min(2, self.replication_factor)

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
