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
