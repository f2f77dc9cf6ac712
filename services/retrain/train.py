"""The retraining stage: offline store -> Ray Data label join -> LightGBM -> registry.

`train_model` is what the service runs on a retrain request or a drift event, what
bootstrap runs on synthetic history, and what the tests call directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import lightgbm as lgb
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as pads

from libs.common.definitions import Definitions, ModelDefinition, feature_key
from libs.common.features import CATEGORIES_FILE, CategoryEncoding
from libs.common.observability import get_logger
from libs.common.offline import OUTCOMES, OfflineStore
from libs.common.registry import DRIFT_REFERENCE, MlflowRegistry, Registry, request_tags
from libs.common.registry.aliases import MODEL_CARD
from libs.common.registry.mlflow import COMPANION_FILE, COMPANION_META
from services.retrain.adapters.ray_train import RayTrainFit
from services.retrain.adapters.training_frame import build_training_frame
from services.retrain.core.companion import TrainedCompanion, train_companion
from services.retrain.core.dataset import LABEL, TS, JoinSpec
from services.retrain.core.drift.reference import PREDICTION, DriftReference
from services.retrain.core.evaluation import HoldoutEvaluation, evaluate
from services.retrain.core.model_card import (
    CompanionSummary,
    Metrics,
    build_model_card,
    data_window,
    gain_importance,
)
from services.retrain.core.promotion import NO_CHAMPION, ChampionScore, decide
from services.retrain.core.results import TrainingResult
from services.retrain.core.slices import Slice, cut_slices
from services.retrain.core.training import TrainedModel, fit_by_size, score, train_booster
from services.retrain.core.window import select_window
from services.retrain.errors import NoTrainingData, UnknownModel
from services.retrain.settings import RetrainSettings

log = get_logger(__name__)


def _holdout_evaluation(
    booster: lgb.Booster,
    trained: TrainedModel,
    slices: list[Slice],
    encoding: CategoryEncoding | None = None,
) -> HoldoutEvaluation:
    """Any booster's AUC, log loss, calibration and slice AUCs on the candidate's holdout.

    `encoding` is that booster's own category encoding (the candidate's by default).
    """
    scores = score(booster, trained.holdout, trained.columns, encoding or trained.encoding)
    return evaluate(trained.holdout[LABEL].to_numpy(dtype="float64"), scores, slices)


def _champion_score(
    registry: Registry,
    model: str,
    champion: str | None,
    trained: TrainedModel,
    slices: list[Slice],
) -> ChampionScore:
    """The champion's full metrics on the candidate's own holdout, when it can score it.

    Scoring both on the same (newest) rows keeps the comparison fair after drift,
    when the champion's recorded metrics describe data that no longer looks like
    today; so a champion that cannot score these rows (it reads other features, or
    does not load) is not compared at all rather than by its recorded AUC.
    """
    if champion is None:
        return NO_CHAMPION
    try:
        booster = registry.load_booster(model, champion)
        names = list(booster.feature_name())
        if names != trained.columns:
            return ChampionScore(
                champion, None, f"champion v{champion} reads other features {names}"
            )
        # Each booster scores through its own version's codes: without declared allowed
        # values, two versions' codes of one category may differ.
        encoding = CategoryEncoding()
        if trained.encoding.columns:
            encoding = CategoryEncoding.from_json(
                registry.read_file(model, champion, CATEGORIES_FILE)
            )
        if encoding.columns != trained.encoding.columns:
            return ChampionScore(
                champion,
                None,
                f"champion v{champion} has categorical inputs {encoding.columns}, "
                f"not {trained.encoding.columns}",
            )
        return ChampionScore(champion, _holdout_evaluation(booster, trained, slices, encoding))
    except Exception as exc:
        log.warning("champion_not_scorable", model=model, version=champion, exc_info=True)
        return ChampionScore(
            champion, None, f"champion v{champion} cannot score the holdout: {exc}"[:300]
        )


def drift_reference(
    trained: TrainedModel, frame: pd.DataFrame, model: ModelDefinition
) -> DriftReference:
    """The version's drift reference: its training inputs, keyed 'view.feature' as serve
    logs them, and its scores on the holdout (scores on its own training rows would be
    sharper than live traffic's and raise false prediction-drift alarms).

    Categorical inputs have no reference (quantile bins and KS need numbers), so the
    monitor does not test them; their effect still shows in the prediction's drift.
    """
    names = dict(zip(trained.columns, model.features, strict=True))
    holdout_scores = score(trained.booster, trained.holdout, trained.columns, trained.encoding)
    numeric = [c for c in trained.columns if c not in trained.encoding.categories]
    return DriftReference.of(
        {
            **{names[c]: frame[c].to_numpy() for c in numeric},
            PREDICTION: holdout_scores,
        }
    )


def companion_summary(companion: TrainedCompanion | None) -> CompanionSummary | None:
    """The model card's view of the companion: inputs, size and holdout metrics."""
    if companion is None:
        return None
    m = companion.metrics
    return CompanionSummary(
        features=companion.features,
        selection=companion.selection,
        trees=int(companion.booster.num_trees()),
        metrics=Metrics.model_validate(
            {
                "auc": m.auc,
                "log_loss": m.log_loss,
                "calibration_error": None,
                "rows": m.holdout_rows,
            }
        ),
    )


def companion_files(companion: TrainedCompanion | None) -> dict[str, str]:
    """The registry files of a companion (none without one): its booster, checked by
    sha256 like model.lgb, and its JSON description."""
    if companion is None:
        return {}
    return {COMPANION_FILE: companion.model_text(), COMPANION_META: companion.to_json()}


def real_label_count(store: OfflineStore, model: str, *, at_least: int | None = None) -> int:
    """Distinct outcomes of `model` in `store` (build it without `include` to count only
    real labels, not the synthetic bootstrap history).

    Reads only the `event_id` and `model` columns with pyarrow, no Ray; stops once it
    has counted `at_least`, so the check stays cheap on a large store.
    """
    files = store.files(OUTCOMES)
    if not files:
        return 0
    dataset = pads.dataset(files, filesystem=store.filesystem, format="parquet")
    seen: set[str] = set()
    for batch in dataset.to_batches(columns=["event_id"], filter=pc.field("model") == model):
        seen.update(batch.column(0).to_pylist())
        if at_least is not None and len(seen) >= at_least:
            break
    return len(seen)


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
        since: the run's change point (epoch seconds): a drift's, or an engineer's
            window. The model's `training` policy decides what it bounds
            (`core/window.py`). The synthetic bootstrap history is never part of a run
            with a change point, and otherwise only while the store holds fewer than
            `promotion.min_rows` real labels of the model.

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
    root = offline_root or settings.offline_dir
    min_rows = model.promotion.min_rows
    include = (
        [settings.bootstrap_dir]
        if offline_root is None
        and settings.includes_bootstrap_history
        and since is None
        and real_label_count(OfflineStore(root), model_name, at_least=min_rows) < min_rows
        else []
    )
    store = OfflineStore(root, include=include)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    spec = JoinSpec.of(definitions, model_name)
    frame = build_training_frame(
        store,
        spec,
        partitions=settings.shuffle_partitions,
        # Read only the rows select_window keeps: every policy but `all` bounds them.
        since=since if model.training.window != "all" else None,
    )
    window = select_window(frame, model.training, since=since)
    frame = window.frame
    if since is not None and model.training.window != "all" and len(frame) < min_rows:
        # A fresh drift's window holds too few labels to pass the min_rows gate: a run now
        # would register a version that cannot be promoted. The monitor asks again once
        # enough labels since the change point arrived (post_change_labels, refit_labels).
        raise NoTrainingData(
            f"{model_name}: {len(frame)} labelled rows in the window ({window.description}); "
            f"promotion needs min_rows {min_rows}: waiting for labels"
        )
    timings["join_s"] = time.perf_counter() - started

    t = time.perf_counter()
    trained = train_booster(
        frame,
        model,
        holdout_fraction=settings.holdout_fraction,
        weights=window.weights,
        fit=fit_by_size(settings.distributed_training_rows, RayTrainFit.from_settings(settings)),
        categories=spec.categories,
    )
    names = dict(zip(trained.columns, model.features, strict=True))
    importance = gain_importance(trained.booster, names)
    # Serve's first fallback, trained on the same rows and measured on the same holdout.
    # A companion that cannot be trained never costs the version: serve answers with
    # the constant prior where the companion would have.
    companion: TrainedCompanion | None = None
    try:
        companion = train_companion(
            frame,
            model,
            importance,
            holdout_fraction=settings.holdout_fraction,
            weights=window.weights,
            categories=spec.categories,
        )
    except Exception:
        log.error("companion_training_failed", model=model_name, exc_info=True)
    if companion is None:
        log.warning("companion_not_trained", model=model_name, spec=str(model.fallback.companion))
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    previous = registry.champion_version(model_name)
    gates = model.promotion
    # Slices are cut once from the holdout, so both models are judged on the same rows.
    slices = cut_slices(
        {ref: trained.holdout[feature_key(ref)].to_numpy() for ref in gates.slices},
        bins=gates.slice_bins,
    )
    candidate = _holdout_evaluation(trained.booster, trained, slices)
    champion = _champion_score(registry, model_name, previous, trained, slices)
    metrics = {**trained.metrics.as_dict(), "calibration_error": candidate.calibration_error}
    if companion is not None:
        metrics |= {
            "companion_auc": companion.metrics.auc,
            "companion_log_loss": companion.metrics.log_loss,
        }
    decision = decide(
        candidate,
        gates,
        rows=trained.metrics.rows,
        prior_log_loss=trained.metrics.prior_log_loss,
        champion=champion,
        tolerance=settings.auc_tolerance,
    )
    reference = drift_reference(trained, frame, model)
    card = build_model_card(
        model=model_name,
        reason=reason,
        window=data_window(
            frame[TS].to_numpy(),
            train_rows=trained.metrics.train_rows,
            since=since,
            bootstrap_history=bool(include),
            policy=window.description,
        ),
        candidate=candidate,
        champion=champion,
        decision=decision,
        reference=reference,
        importance=importance,
        timings={**timings, "evaluate_s": time.perf_counter() - t},
        companion=companion_summary(companion),
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
            "data_window": window.description[:500],
            **request_tags(request_ids),
            **({"window_since": str(since)} if since is not None else {}),
        },
        example=trained.holdout[trained.columns].head(5),
        files={
            DRIFT_REFERENCE: reference.to_json(),
            # Stored with the booster, before the version exists: serve never loads a
            # version without its codes. Absent: the version has no categorical inputs.
            **({CATEGORIES_FILE: trained.encoding.to_json()} if trained.encoding.columns else {}),
            **companion_files(companion),
        },
        version_files=lambda v: {MODEL_CARD: card.for_version(v).model_dump_json(indent=2)},
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
