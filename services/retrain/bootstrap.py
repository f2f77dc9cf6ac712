"""Cold start: give every model without a champion one, trained on synthetic history.

The history comes from `libs.common.synthetic.SyntheticSource` (a learnable ground
truth for any source definition), is written to a separate offline root
(`<offline>/bootstrap`, files named `bootstrap-<model>`) so it never mixes with real
data, and goes through the same `train_model` pipeline as every retraining. Its entity
ids start with the reserved `BOOTSTRAP_ENTITY_PREFIX`, so even a training set that
includes it (a model with too few real labels) never joins synthetic labels to a real
entity's signals.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from libs.common.definitions import Definitions
from libs.common.observability import get_logger
from libs.common.offline import OUTCOMES, SIGNALS, OfflineStore, signal_row
from libs.common.registry import MlflowRegistry, Registry
from libs.common.schemas import Outcome, Signal, utcnow
from libs.common.synthetic import SyntheticConfig, SyntheticSource
from services.retrain.core.offline_rows import outcome_row
from services.retrain.core.results import TrainingResult
from services.retrain.settings import RetrainSettings
from services.retrain.train import train_model

log = get_logger(__name__)

BOOTSTRAP_REASON = "bootstrap"
# Reserved for synthetic bootstrap entities: real sources must not send entity ids
# starting with it (README, "Training data and training size").
BOOTSTRAP_ENTITY_PREFIX = "__bootstrap__-"


def bootstrap_root(settings: RetrainSettings) -> Path:
    """The offline root holding synthetic bootstrap history.

    Retraining reads it too only when `settings.includes_bootstrap_history`.
    """
    return settings.bootstrap_dir


def write_synthetic_history(
    store: OfflineStore,
    definitions: Definitions,
    model_name: str,
    *,
    entities: int,
    steps: int,
    step_s: float,
    seed: int = 0,
    end: datetime | None = None,
    file_prefix: str = "bootstrap",
    entity_prefix: str = "",
) -> tuple[int, int]:
    """Write a clean synthetic past of the model's sources into `store`.

    Every source the model reads gets signals for the same entity ids; outcomes come
    from the first source's ground truth, stamped `label_horizon_s` after the signal
    they describe, so the label join takes features as of that signal.

    Args:
        store: the offline store to write to.
        definitions: the definitions.
        model_name: the model whose sources and label are generated.
        entities: synthetic entities per source.
        steps: reports per entity.
        step_s: seconds between reports.
        seed: random seed (same seed, same history).
        end: time of the last report (default now).
        file_prefix: file names are f"{file_prefix}-{model_name}" (rewriting replaces).
        entity_prefix: entity ids are f"{entity_prefix}{source.entity}-{i}"; the
            bootstrap passes the reserved `BOOTSTRAP_ENTITY_PREFIX`.

    Returns:
        (signals written, outcomes written).
    """
    model = definitions.model(model_name)
    source_names = dict.fromkeys(v.source for v in definitions.views_of_model(model))
    sources = [definitions.source(name) for name in source_names]
    end = end or utcnow()
    horizon = timedelta(seconds=model.label_horizon_s)
    signals: list[dict[str, object]] = []
    outcomes: list[dict[str, object]] = []
    for i, source in enumerate(sources):
        synthetic = SyntheticSource(
            source,
            SyntheticConfig(entities=entities, seed=seed + i),
            entity_prefix=f"{entity_prefix}{source.entity}",
        )
        for kind, payload in synthetic.history(
            end=end, steps=steps, step_s=step_s, model=model_name
        ):
            if kind == "signal":
                signals.append(_history_row(Signal.model_validate(payload)))
            elif i == 0:
                outcome = Outcome.model_validate(payload)
                if horizon:
                    shifted = outcome.event_time + horizon
                    outcome = outcome.model_copy(update={"event_time": shifted})
                outcomes.append(outcome_row(outcome))
    name = f"{file_prefix}-{model_name}"
    store.append(SIGNALS, signals, name=name)
    store.append(OUTCOMES, outcomes, name=name)
    return len(signals), len(outcomes)


def _history_row(signal: Signal) -> dict[str, object]:
    """A synthetic signal's row: not from Kafka, so no offset, and it "arrived" when
    it happened (issue 7)."""
    row = signal_row(signal, topic="", partition=-1, offset=-1)
    return {**row, "arrival_ts": row["ts"]}


def bootstrap_models(
    settings: RetrainSettings,
    definitions: Definitions,
    *,
    registry: Registry | None = None,
) -> list[TrainingResult]:
    """Train, register and promote a first champion for each model that has none.

    Shows a progress bar on a terminal and logs each stage either way. A model whose
    bootstrap run fails is logged and skipped; serve answers it with its fallback.

    Args:
        settings: retrain settings (bootstrap sizes, offline location, registry).
        definitions: the definitions.
        registry: the model registry; MLflow from `settings` when None.

    Returns:
        One result per model bootstrapped (empty when every model has a champion).
    """
    registry = registry or MlflowRegistry.from_settings(settings)
    todo = [m.name for m in definitions.models if registry.champion_version(m.name) is None]
    if not todo:
        log.info("bootstrap_skipped", reason="every model has a champion")
        return []
    store = OfflineStore(bootstrap_root(settings))
    results: list[TrainingResult] = []
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]bootstrap[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
        disable=not sys.stderr.isatty(),
        transient=False,
    )
    with progress:
        task = progress.add_task("models", total=len(todo) * 2)
        for name in todo:
            started = time.perf_counter()
            progress.update(task, description=f"{name}: synthetic history")
            n_signals, n_outcomes = write_synthetic_history(
                store,
                definitions,
                name,
                entities=settings.bootstrap_entities,
                steps=settings.bootstrap_steps,
                step_s=settings.bootstrap_step_s,
                seed=settings.bootstrap_seed,
                entity_prefix=BOOTSTRAP_ENTITY_PREFIX,
            )
            log.info(
                "bootstrap_history_written",
                model=name,
                signals=n_signals,
                outcomes=n_outcomes,
                seconds=round(time.perf_counter() - started, 2),
            )
            progress.advance(task)
            progress.update(task, description=f"{name}: join, train, register")
            try:
                result = train_model(
                    settings,
                    definitions,
                    name,
                    BOOTSTRAP_REASON,
                    registry=registry,
                    offline_root=store.root,
                )
            except Exception:
                log.exception("bootstrap_failed", model=name)
                progress.advance(task)
                continue
            progress.advance(task)
            if not result.promoted:
                log.warning(
                    "bootstrap_not_promoted",
                    model=name,
                    version=result.version,
                    reasons=list(result.decision.reasons),
                )
            log.info(
                "bootstrap_done",
                model=name,
                version=result.version,
                promoted=result.promoted,
                seconds=round(time.perf_counter() - started, 2),
            )
            results.append(result)
    return results
