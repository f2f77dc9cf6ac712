"""The retraining stage: offline store -> Ray Data label join -> LightGBM -> registry.

`train_model` is what the service runs on a retrain request or a drift event, what
bootstrap runs on synthetic history, and what the tests call directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from libs.common.definitions import Definitions, ModelDefinition
from libs.common.observability import get_logger
from libs.common.offline import OfflineStore
from libs.common.registry import DRIFT_REFERENCE, MlflowRegistry, Registry, request_tags
from services.retrain.adapters.ray_data import build_training_frame
from services.retrain.core.dataset import TS, JoinSpec
from services.retrain.core.drift.reference import PREDICTION, DriftReference
from services.retrain.core.promotion import decide
from services.retrain.core.results import TrainingResult
from services.retrain.core.training import TrainedModel, holdout_auc, train_booster
from services.retrain.errors import NoTrainingData, UnknownModel
from services.retrain.settings import RetrainSettings

log = get_logger(__name__)


def _champion_auc(
    registry: Registry, model: str, trained: TrainedModel
) -> tuple[float | None, str]:
    """The champion's AUC, on the candidate's own holdout when the champion can score it.

    Scoring both on the same (newest) rows keeps the comparison fair after drift,
    when the champion's recorded AUC describes data that no longer looks like today.
    """
    champion = registry.champion_version(model)
    if champion is None:
        return None, "none"
    try:
        booster = registry.load_booster(model, champion)
        if list(booster.feature_name()) == trained.columns:
            return holdout_auc(booster, trained.holdout, trained.columns), "same-holdout"
    except Exception:
        log.warning("champion_not_scorable", model=model, version=champion, exc_info=True)
    recorded = registry.version_metrics(model, champion).get("auc")
    return (None if recorded is None else float(recorded)), "recorded"


def drift_reference(
    trained: TrainedModel, frame: pd.DataFrame, model: ModelDefinition
) -> DriftReference:
    """The version's drift reference: its training inputs, keyed 'view.feature' as serve
    logs them, and its scores on the holdout (scores on its own training rows would be
    sharper than live traffic's and raise false prediction-drift alarms).
    """
    names = dict(zip(trained.columns, model.features, strict=True))
    holdout_scores = trained.booster.predict(trained.holdout[trained.columns].to_numpy())
    return DriftReference.of(
        {
            **{names[c]: frame[c].to_numpy() for c in trained.columns},
            PREDICTION: holdout_scores,
        }
    )


def train_model(
    settings: RetrainSettings,
    definitions: Definitions,
    model_name: str,
    reason: str,
    *,
    registry: Registry | None = None,
    offline_root: str | Path | None = None,
    request_ids: Sequence[str] = (),
    since: float | None = None,
) -> TrainingResult:
    """Train `model_name` on the offline store, register the version, promote if it passes.

    Needs a connected Ray (`ray.init`) for the join. Blocking; the service runs it in
    a worker thread.

    Args:
        settings: retrain settings (holdout fraction, tolerance, registry location).
        definitions: the definitions (model, views, sources).
        model_name: which model to train.
        reason: why; recorded as a version tag and in the ModelChanged events.
        registry: the model registry; MLflow from `settings` when None.
        offline_root: the offline store to read; `settings.offline_dir` when None.
        request_ids: event ids of the requests this run answers; tagged on the version
            so a redelivered request finds it (`Registry.version_for_request`).
        since: train only on rows as of this time (epoch seconds) or later: the data
            window after a drift's change point. The synthetic bootstrap history is
            never part of a windowed run.

    Returns:
        The registered version, its metrics and the promotion decision.

    Raises:
        UnknownModel: the definitions declare no such model.
        NoTrainingData: no labelled rows (nothing is registered).
    """
    try:
        model = definitions.model(model_name)
    except KeyError:
        raise UnknownModel(model_name, [m.name for m in definitions.models]) from None
    registry = registry or MlflowRegistry.from_settings(settings)
    include = (
        [settings.bootstrap_dir]
        if offline_root is None and settings.includes_bootstrap_history and since is None
        else []
    )
    store = OfflineStore(offline_root or settings.offline_dir, include=include)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    frame = build_training_frame(
        store, JoinSpec.of(definitions, model_name), partitions=settings.shuffle_partitions
    )
    if since is not None:
        frame = frame[frame[TS] >= since].reset_index(drop=True)
        if frame.empty:
            raise NoTrainingData(f"no labelled rows of {model_name} as of {since} or later")
    timings["join_s"] = time.perf_counter() - started

    t = time.perf_counter()
    trained = train_booster(frame, model, holdout_fraction=settings.holdout_fraction)
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    previous = registry.champion_version(model_name)
    champion_auc, basis = _champion_auc(registry, model_name, trained)
    metrics = trained.metrics.as_dict()
    decision = decide(
        metrics,
        model.promotion,
        champion_auc=champion_auc,
        champion_basis=basis,
        tolerance=settings.auc_tolerance,
    )
    version = registry.register(
        model_name,
        trained.booster,
        params={**trained.params, "num_boost_round": model.num_boost_round},
        metrics=metrics,
        tags={
            "reason": reason[:500],
            "training_rows": str(trained.metrics.rows),
            "data": store.root,
            "promotion": decision.summary[:5000],
            **request_tags(request_ids),
            **({"window_since": str(since)} if since is not None else {}),
        },
        example=trained.holdout[trained.columns].head(5),
        files={DRIFT_REFERENCE: drift_reference(trained, frame, model).to_json()},
    )
    if decision.promote:
        registry.promote(model_name, version)
    timings["register_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started

    result = TrainingResult(
        model=model_name,
        version=version,
        reason=reason,
        metrics=metrics,
        decision=decision,
        previous_champion=previous,
        timings=timings,
    )
    log.info(
        "model_trained",
        model=model_name,
        version=version,
        promoted=decision.promote,
        auc=None if math.isnan(metrics["auc"]) else round(metrics["auc"], 4),
        rows=trained.metrics.rows,
        reasons=list(decision.reasons),
        **{k: round(v, 2) for k, v in timings.items()},
    )
    return result
