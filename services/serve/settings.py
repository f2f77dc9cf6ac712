"""Settings of the serve service: replica sizing, priority thresholds, traffic split."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from libs.common.settings import Settings


class ServeSettings(Settings):
    """Everything a serve replica needs; env vars `SIGNALOPS_SERVE_*` and friends."""

    serve_num_replicas: int = Field(2, ge=1, description="Two replicas keep serving on redeploys.")
    serve_num_cpus: float = Field(0.25, gt=0, description="CPUs reserved per replica.")
    serve_max_ongoing_requests: int = Field(
        320,
        ge=1,
        description="Serve's per-replica concurrency; must cover the hard cap plus the queues.",
    )

    # In-replica priority limiter (RAY_NOTES.md "Prioritisation"): a request of a
    # class is admitted while in-flight requests are below its threshold.
    priority_low_limit: int = Field(32, ge=1)
    priority_normal_limit: int = Field(128, ge=1)
    priority_hard_cap: int = Field(256, ge=1)
    retry_after_s: int = Field(1, ge=1)

    # Request path of issue 8 (HS1): per-class queues, deadlines, prediction cache.
    # Serve counts queued requests as ongoing: serve_max_ongoing_requests should cover
    # the hard cap plus the three queues, or Serve queues the excess itself.
    priority_queue_low: int = Field(8, ge=0, description="Low requests that may wait.")
    priority_queue_normal: int = Field(16, ge=0, description="Normal requests that may wait.")
    priority_queue_high: int = Field(32, ge=0, description="High requests that may wait.")
    priority_queue_max_wait_s: float = Field(
        0.02, ge=0, description="Longest wait for a slot before a queued request is shed."
    )
    serve_default_deadline_ms: int = Field(
        1000, ge=1, description="Budget of a request without X-Deadline-Ms, from arrival."
    )
    prediction_cache_enabled: bool = Field(True, description="Cache scores of model versions.")
    prediction_cache_size: int = Field(100_000, ge=1, description="Most scores cached.")
    prediction_cache_ttl_s: float = Field(
        0.0, ge=0, description="Forget a cached score after this long; 0: only when evicted."
    )

    challenger_fraction: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Share of entities routed to a 'challenger' alias, unless the "
        "registry's traffic tag of the model says otherwise.",
    )
    batch_max: int = Field(1000, ge=1, description="Most requests in one batch call (else 413).")
    features_batch_max: int = Field(
        1000, ge=1, description="Most entities in one features read (else 413)."
    )
    predict_inline_max_rows: int = Field(
        64, ge=1, description="Bigger batches are scored in a worker thread, off the event loop."
    )

    feature_timeout_s: float = Field(0.25, gt=0, description="Budget of one online-store read.")
    breaker_fail_max: int = Field(5, ge=1)
    breaker_reset_s: float = Field(10.0, gt=0)

    registry_startup_wait_s: float = Field(
        15.0,
        ge=0,
        description="How long a starting replica waits for its first registry "
        "read before answering with the fallback while the load goes on.",
    )
    registry_poll_s: float = Field(
        10.0, ge=0, description="Re-check registry aliases this often; 0 turns polling off."
    )
    prediction_log_max_pending: int = Field(10_000, ge=1)

    # The main model's budget (services/serve/core/companion.py): past it, or when the
    # model raises, the version's companion answers; the constant prior only after.
    serve_model_timeout_ms: float = Field(
        100.0,
        ge=0,
        description="Budget of one main-model predict call (a batch is one call); 0: none.",
    )
    serve_model_max_overdue: int = Field(
        2,
        ge=1,
        description="Predicts of a version still running past their budget at which the "
        "companion answers at once (a stuck model cannot take every worker thread).",
    )

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> ServeSettings:
        if not (self.priority_low_limit <= self.priority_normal_limit <= self.priority_hard_cap):
            raise ValueError(
                "priority limits must satisfy low <= normal <= hard cap, got "
                f"{self.priority_low_limit}, {self.priority_normal_limit}, "
                f"{self.priority_hard_cap}"
            )
        admitted = (
            self.priority_hard_cap
            + self.priority_queue_low
            + self.priority_queue_normal
            + self.priority_queue_high
        )
        if self.serve_max_ongoing_requests < admitted:
            # Serve would queue the excess itself, where no priority applies.
            raise ValueError(
                f"serve_max_ongoing_requests ({self.serve_max_ongoing_requests}) must be at "
                f"least the priority hard cap plus the three queues ({admitted})"
            )
        return self


def settings_payload(settings: Settings) -> dict[str, Any]:
    """Settings as a JSON-able dict for a replica on another process or node.

    Paths become absolute and the tracking URI explicit, since a replica's working
    directory is not the driver's. The admin token never travels in it: Serve stores
    deployment arguments (the dashboard shows them), so the replica reads
    SIGNALOPS_ADMIN_TOKEN from its node's environment.
    """
    payload = settings.model_dump(mode="json")
    payload["data_dir"] = str(settings.data_dir.resolve())
    payload["definitions"] = str(settings.definitions.resolve())
    payload["mlflow_tracking_uri"] = settings.tracking_uri
    payload.pop("admin_token", None)
    return payload
