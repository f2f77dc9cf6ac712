"""Settings of the retrain service: the shared ones plus bootstrap and training knobs."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from libs.common.settings import Settings


class RetrainSettings(Settings):
    """Everything `python -m services.retrain.main` reads from `SIGNALOPS_*` variables."""

    bootstrap_enabled: bool = Field(
        True, description="Train a champion from synthetic history for models that have none."
    )
    bootstrap_entities: int = Field(40, ge=2, description="Synthetic entities per model.")
    bootstrap_steps: int = Field(
        100, ge=10, description="Reports per entity; labelled rows = entities * steps."
    )
    bootstrap_step_s: float = Field(30.0, gt=0, description="Seconds between reports.")
    bootstrap_seed: int = 7

    train_with_bootstrap_history: bool | None = Field(
        None,
        description="Keep the synthetic bootstrap history in every training set, so a "
        "retrain works before real labels arrive. None: only when environment=development.",
    )

    @property
    def bootstrap_dir(self) -> Path:
        """Offline root of the synthetic bootstrap history, apart from real data."""
        return Path(self.offline_dir) / "bootstrap"

    @property
    def includes_bootstrap_history(self) -> bool:
        if self.train_with_bootstrap_history is None:
            return self.environment == "development"
        return self.train_with_bootstrap_history

    monitor_warm_up_records: int = Field(
        10_000,
        ge=0,
        description="Newest records per partition of predictions and outcomes the drift "
        "monitor re-reads at start to rebuild its windows (0: start empty).",
    )

    holdout_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Latest share of rows (by as-of time) held out."
    )
    auc_tolerance: float = Field(
        0.01, ge=0.0, le=1.0, description="How much lower than the champion's AUC still promotes."
    )
    shuffle_partitions: int | None = Field(
        None,
        ge=1,
        description="Ray Data groupby partitions; None: one per 64 MiB of offline data.",
    )

    # Training at any size: plain LightGBM in the service's process while the training
    # set fits one worker; beyond `distributed_training_rows`, Ray Train's LightGBM
    # trainer on the Ray cluster. Outgrowing one machine changes these, not code.
    distributed_training_rows: int = Field(
        2_000_000,
        ge=0,
        description="Training rows above which LightGBM trains distributed on the Ray "
        "cluster (Ray Train); 0 sends every run there.",
    )
    distributed_workers: int = Field(2, ge=1, description="Ray Train LightGBM workers.")
    distributed_cpus_per_worker: float = Field(
        0.5,
        gt=0,
        description="CPUs each Ray Train worker reserves (fractional fits the 2-core "
        "embedded stack); LightGBM threads per worker = max(1, floor of it).",
    )
    distributed_storage_path: str | None = Field(
        None,
        description="Where Ray Train persists the final checkpoint; None: a temporary "
        "folder on this machine (one-node clusters). Set a shared path or s3:// URI on "
        "a multi-node cluster.",
    )
