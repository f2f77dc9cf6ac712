"""The data window of a retrain: which labelled rows it learns from, and how much each weighs.

Pure: a training frame and the model's `TrainingWindow` policy in, the rows to train on,
their LightGBM sample weights and a one-line description (version tag, model card) out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from libs.common.definitions import TrainingWindow
from services.retrain.core.dataset import TS
from services.retrain.errors import NoTrainingData


@dataclass(frozen=True)
class WindowedFrame:
    """The rows a run trains on.

    Attributes:
        frame: the selected rows, index reset, in the input's order.
        weights: one LightGBM sample weight per row of `frame`, or None (all equal).
        description: what was selected, for the `data_window` version tag.
    """

    frame: pd.DataFrame
    weights: np.ndarray | None
    description: str


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def decay_weights(ts: np.ndarray, half_life_s: float) -> np.ndarray:
    """0.5 ** (age / half_life_s), age counted back from the newest row (which weighs 1).

    Relative to the newest row rather than the clock, so the same rows always get the
    same weights, however late the run.
    """
    if len(ts) == 0:
        return np.empty(0, dtype="float64")
    age = float(np.max(ts)) - ts.astype("float64")
    return np.power(0.5, age / half_life_s)


def select_window(
    frame: pd.DataFrame, policy: TrainingWindow, *, since: float | None = None
) -> WindowedFrame:
    """Apply a model's data-window policy to its training frame.

    Args:
        frame: the labelled training rows (a `ts` column, as of time in epoch seconds).
        policy: the model's `training` section.
        since: the run's change point (epoch seconds), when a drift or an engineer gave
            one. Every policy but `all` keeps only rows as of it or later.

    Returns:
        The rows to train on, their sample weights (only for `decay`) and a description.

    Raises:
        NoTrainingData: the window holds no rows.
    """
    total = len(frame)
    bound = since if policy.window != "all" else None
    selected = frame
    if bound is not None:
        selected = selected[selected[TS] >= bound]
        if selected.empty:
            raise NoTrainingData(
                f"window {policy.window}: none of the {total} labelled rows is as of "
                f"{_iso(bound)} ({bound}) or later"
            )
    if policy.window == "last_labels":
        assert policy.last_labels is not None  # TrainingWindow's validator requires it
        # Stable sort: rows stamped at the same time keep their order, so the cut is
        # deterministic for a given frame.
        order = np.argsort(selected[TS].to_numpy(), kind="stable")
        selected = selected.iloc[np.sort(order[-policy.last_labels :])]
    selected = selected.reset_index(drop=True)
    if selected.empty:
        raise NoTrainingData(f"window {policy.window}: no labelled rows")

    weights = None
    since_text = f" as of {_iso(bound)}" if bound is not None else ""
    rows = f"{len(selected)} of {total} rows"
    if policy.window == "since_change":
        text = f"since_change:{since_text or ' no change point, all history'} ({rows})"
    elif policy.window == "all":
        text = f"all: all history ({rows})" + (
            f"; change point {_iso(since)} ignored" if since is not None else ""
        )
    elif policy.window == "last_labels":
        text = f"last_labels: newest {policy.last_labels}{since_text} ({rows})"
    else:
        assert policy.half_life_s is not None  # TrainingWindow's validator requires it
        weights = decay_weights(selected[TS].to_numpy(), policy.half_life_s)
        # Kish's effective sample size: how many equally weighted rows these are worth.
        effective = float(weights.sum() ** 2 / np.square(weights).sum())
        text = (
            f"decay: half-life {policy.half_life_s:g}s from the newest row{since_text} "
            f"({rows}, effective {effective:.0f})"
        )
    return WindowedFrame(frame=selected, weights=weights, description=text)
