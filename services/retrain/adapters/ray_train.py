"""Ray Train plumbing of distributed LightGBM: a `Fit` that trains on the Ray cluster.

`core.training.train_booster` uses it through `fit_by_size` once a training set
outgrows one worker (`distributed_training_rows`); the time split and the holdout
metrics stay in the core, so both paths are measured alike.
"""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import ray.data
import ray.train
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.lightgbm import LightGBMTrainer, RayTrainReportCallback, get_network_params

from libs.common.observability import get_logger
from services.retrain.core.dataset import LABEL
from services.retrain.core.training import categorical_split
from services.retrain.settings import RetrainSettings

log = get_logger(__name__)

TRAIN = "train"
WEIGHT = "weight"
# The file name RayTrainReportCallback.get_model reads from a checkpoint.
MODEL_FILE = RayTrainReportCallback.CHECKPOINT_NAME
# Rows are shuffled before they are dealt to the workers: LightGBM's data-parallel
# learner finds each feature's bins on one worker's rows, which must look like all of them.
SHUFFLE_SEED = 0


def _shard_arrays(
    columns: list[str], with_weights: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """This worker's shard as (features, labels, weights), read as NumPy batches.

    NumPy batches sidestep `to_pandas()`'s Arrow-backed columns, which LightGBM
    rejects (RAY_NOTES.md).
    """
    shard = ray.train.get_dataset_shard(TRAIN)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in [*columns, LABEL, WEIGHT]}
    for batch in shard.iter_batches(batch_size=65_536, batch_format="numpy"):
        for name, values in batch.items():
            parts[name].append(values)

    def column(name: str) -> np.ndarray:
        return np.concatenate(parts[name]).astype("float64") if parts[name] else np.empty(0)

    x = np.column_stack([column(c) for c in columns]) if columns else np.empty((0, 0))
    return x, column(LABEL), column(WEIGHT) if with_weights else None


def _train_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: LightGBM on its shard, joined to the others over the network.

    Reports once, after the last round: the stock callback reports every round, which
    made 30 rounds take 82 s instead of 23 s (RAY_NOTES.md).
    """
    started = time.perf_counter()
    columns: list[str] = config["columns"]
    x, y, w = _shard_arrays(columns, config["with_weights"])
    loaded = time.perf_counter()
    params, categorical = categorical_split(config["params"])
    params.update(get_network_params())
    params.setdefault("tree_learner", "data_parallel")
    params.setdefault("pre_partition", True)
    params["num_threads"] = config["num_threads"]
    dataset = lgb.Dataset(
        x,
        label=y,
        weight=w,
        feature_name=columns,
        categorical_feature=categorical,
        free_raw_data=True,
    )
    booster = lgb.train(params, dataset, num_boost_round=config["rounds"])
    metrics = {
        "rounds": booster.current_iteration(),
        "rows": len(y),
        "load_s": loaded - started,
        "fit_s": time.perf_counter() - loaded,
    }
    if ray.train.get_context().get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as folder:
            booster.save_model(str(Path(folder) / MODEL_FILE))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
    else:
        ray.train.report(metrics, checkpoint=None)


@dataclass(frozen=True)
class RayTrainFit:
    """A `core.training.Fit` that runs Ray Train's LightGBM trainer on the connected cluster.

    Needs a connected Ray (`ray.init`). The training rows go to the cluster as a Ray
    Dataset, shuffled and split evenly over `workers`; rank 0's booster comes back
    through a checkpoint in LightGBM's text format.

    Attributes:
        workers: Ray Train workers.
        cpus_per_worker: CPUs each worker reserves; fractional values let 2 workers
            share the embedded stack's 2 cores. LightGBM threads = max(1, floor of it).
        storage_path: where Ray Train persists the checkpoint; None: a temporary folder
            on this machine, removed afterwards (one-node clusters only).
    """

    workers: int = 2
    cpus_per_worker: float = 0.5
    storage_path: str | None = None

    @classmethod
    def from_settings(cls, settings: RetrainSettings) -> RayTrainFit:
        return cls(
            workers=settings.distributed_workers,
            cpus_per_worker=settings.distributed_cpus_per_worker,
            storage_path=settings.distributed_storage_path,
        )

    def dataset(
        self, train: pd.DataFrame, columns: list[str], weights: np.ndarray | None
    ) -> ray.data.Dataset:
        """The training rows as a Ray Dataset in `workers` shuffled, equal blocks."""
        frame = train[columns].astype("float64")
        frame[LABEL] = train[LABEL].to_numpy(dtype="float64")
        if weights is not None:
            frame[WEIGHT] = np.asarray(weights, dtype="float64")
        order = np.random.default_rng(SHUFFLE_SEED).permutation(len(frame))
        frame = frame.iloc[order].reset_index(drop=True)
        bounds = np.linspace(0, len(frame), self.workers + 1).astype(int)
        return ray.data.from_pandas(
            [frame.iloc[a:b].reset_index(drop=True) for a, b in itertools.pairwise(bounds)]
        )

    def __call__(
        self,
        train: pd.DataFrame,
        columns: list[str],
        weights: np.ndarray | None,
        params: dict[str, Any],
        rounds: int,
    ) -> lgb.Booster:
        started = time.perf_counter()
        storage = self.storage_path or tempfile.mkdtemp(prefix="signalops-ray-train-")
        try:
            trainer = LightGBMTrainer(
                _train_per_worker,
                train_loop_config={
                    "columns": list(columns),
                    "with_weights": weights is not None,
                    "params": dict(params),
                    "rounds": rounds,
                    "num_threads": max(1, int(self.cpus_per_worker)),
                },
                scaling_config=ScalingConfig(
                    num_workers=self.workers,
                    resources_per_worker={"CPU": self.cpus_per_worker},
                ),
                run_config=RunConfig(
                    name=f"signalops-lightgbm-{uuid.uuid4().hex[:8]}", storage_path=storage
                ),
                datasets={TRAIN: self.dataset(train, columns, weights)},
            )
            result = trainer.fit()
            if result.checkpoint is None:
                raise RuntimeError(f"Ray Train finished without a checkpoint: {result!r}")
            booster = RayTrainReportCallback.get_model(result.checkpoint, filename=MODEL_FILE)
            worker = result.metrics or {}
        finally:
            if self.storage_path is None:
                shutil.rmtree(storage, ignore_errors=True)
        # Where the time goes: rank 0's shard read and LightGBM fit; the rest is Ray
        # Train's worker group, the dataset's trip to the workers and the checkpoint.
        log.info(
            "distributed_training_done",
            rows=len(train),
            workers=self.workers,
            cpus_per_worker=self.cpus_per_worker,
            rounds=booster.current_iteration(),
            seconds=round(time.perf_counter() - started, 2),
            shard_read_s=round(float(worker.get("load_s", math.nan)), 2),
            fit_s=round(float(worker.get("fit_s", math.nan)), 2),
        )
        return booster
