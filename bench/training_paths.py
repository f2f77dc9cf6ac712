"""Training at any size: plain LightGBM in process against Ray Train's LightGBM trainer.

Both paths fit the same learnable rows with the same parameters (the shipped default
model's) through the `Fit` functions `train_booster` uses; the distributed one is timed
from the call to the booster back in the driver (dataset to the cluster, workers,
training, checkpoint). Starts a lean local Ray unless --address is given.

    .venv/bin/python bench/training_paths.py                      # 100k and 400k rows
    .venv/bin/python bench/training_paths.py --rows 50000 --workers 2 --cpus-per-worker 0.5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray
from sklearn.metrics import roc_auc_score

from libs.common.definitions import load_definitions
from services.retrain.adapters.ray_train import RayTrainFit
from services.retrain.core.dataset import LABEL
from services.retrain.core.training import lightgbm_params, local_fit

REPO = Path(__file__).resolve().parents[1]


def learnable(rows: int, features: int, seed: int) -> pd.DataFrame:
    """Rows whose label is a noisy logistic function of half of the features (the same
    truth for every seed, so a test set drawn with another seed measures the fit)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    truth = np.resize([1.0, 0.0, -1.0, 0.0], features)
    p = 1.0 / (1.0 + np.exp(-(x @ truth)))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
    frame[LABEL] = (rng.random(rows) < p).astype("float64")
    return frame


def _spread(times: list[float]) -> str:
    return "-".join(f"{t:.2f}" if t < 10 else f"{t:.1f}" for t in (min(times), max(times)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3, help="runs per path; best is shown")
    parser.add_argument("--address", default=None, help="a running Ray cluster (default: local)")
    args = parser.parse_args()

    model = load_definitions(REPO / "signalops.yaml").model("default")
    params, rounds = lightgbm_params(model), model.num_boost_round
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=512 * 1024**2,
            log_to_driver=False,
        )
    distributed = RayTrainFit(workers=args.workers, cpus_per_worker=args.cpus_per_worker)
    columns = [f"f{i}" for i in range(args.features)]
    test = learnable(50_000, args.features, seed=99)

    # The first Ray Train run also pays for starting worker processes; time it apart.
    t = time.perf_counter()
    distributed(learnable(2_000, args.features, seed=1), columns, None, params, rounds)
    warmup_s = time.perf_counter() - t

    print(
        f"LightGBM {params.get('objective')} num_leaves={params.get('num_leaves')} "
        f"rounds={rounds}, {args.features} features; distributed: {args.workers} workers x "
        f"{args.cpus_per_worker} CPU; first Ray Train run (2,000 rows, warm-up) {warmup_s:.1f} s; "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    print()
    print("| training rows | local s | distributed s | distributed / local | AUC local / distr. |")
    print("|---|---|---|---|---|")
    for rows in args.rows:
        train = learnable(rows, args.features, seed=rows)
        local_times, remote_times = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            local = local_fit(train, columns, None, params, rounds)
            local_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            remote = distributed(train, columns, None, params, rounds)
            remote_times.append(time.perf_counter() - t)
        local_s, remote_s = min(local_times), min(remote_times)
        x, y = test[columns].to_numpy(), test[LABEL].to_numpy()
        auc_local = roc_auc_score(y, local.predict(x))
        auc_remote = roc_auc_score(y, remote.predict(x))
        print(
            f"| {rows:,} | {local_s:.2f} ({_spread(local_times)}) "
            f"| {remote_s:.1f} ({_spread(remote_times)}) | {remote_s / local_s:.1f}x "
            f"| {auc_local:.4f} / {auc_remote:.4f} |",
            flush=True,
        )
    print(f"\nload average at end {os.getloadavg()[0]:.1f} (2 cores)")
    ray.shutdown()


if __name__ == "__main__":
    main()
