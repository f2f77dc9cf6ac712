"""Bootstrap, Ray Data retraining and the registry against real Ray and MLflow."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from libs.common.clients.kafka import MemoryPublisher
from libs.common.definitions import load_definitions
from libs.common.errors import RollbackUnavailable
from libs.common.features import model_columns
from libs.common.offline import OfflineStore
from libs.common.registry import DRIFT_REFERENCE, MlflowRegistry
from libs.common.registry.aliases import MODEL_CARD
from libs.common.schemas import utcnow
from services.retrain.admin import promote_version, rollback_model
from services.retrain.bootstrap import bootstrap_models, bootstrap_root, write_synthetic_history
from services.retrain.core.drift.reference import PREDICTION, DriftReference
from services.retrain.core.model_card import ModelCard
from services.retrain.errors import NoTrainingData
from services.retrain.train import train_model


@pytest.mark.parametrize("definitions_file", ["signalops.yaml", "examples/payments.yaml"])
def test_bootstrap_registers_version_1_as_champion(retrain_settings, definitions_file: str) -> None:  # type: ignore[no-untyped-def]
    """Each model without a champion gets version 1, promoted, from synthetic history."""
    settings = retrain_settings(definitions_file)
    definitions = load_definitions(settings.definitions)
    [model] = definitions.models
    registry = MlflowRegistry.from_settings(settings)

    [result] = bootstrap_models(settings, definitions, registry=registry)

    assert (result.model, result.version, result.promoted) == (model.name, "1", True)
    assert result.reason == "bootstrap"
    assert result.metrics["rows"] == 30 * 80
    assert result.metrics["auc"] > 0.7
    assert registry.champion_version(model.name) == "1"
    [info] = registry.list_versions(model.name)
    assert info.aliases == ("champion",)
    assert info.tags["reason"] == "bootstrap"
    assert info.tags["training_rows"] == "2400"
    assert info.metrics["auc"] == pytest.approx(result.metrics["auc"])
    # Serve's view: the champion loads as a LightGBM booster with the model's columns.
    booster = registry.load_booster(model.name, "champion")
    assert isinstance(booster, lgb.Booster)
    assert booster.feature_name() == model_columns(model)
    # Synthetic history stays apart from real data.
    assert OfflineStore(bootstrap_root(settings)).files("signals")
    assert not OfflineStore(settings.offline_dir).files("signals")
    # A second start finds the champion and does nothing.
    assert bootstrap_models(settings, definitions, registry=registry) == []


def test_train_model_on_the_offline_store_registers_version_2(retrain_settings) -> None:  # type: ignore[no-untyped-def]
    """After bootstrap, training on real offline data gives version 2 with its metrics."""
    settings = retrain_settings()
    definitions = load_definitions(settings.definitions)
    name = definitions.models[0].name
    registry = MlflowRegistry.from_settings(settings)
    bootstrap_models(settings, definitions, registry=registry)
    # The features service and the outcome log fill the offline store; here synthetic data
    # stands in, later than the bootstrap history and with seed 14, whose ground truth has
    # every weight's sign flipped against bootstrap seed 7: a concept drift.
    write_synthetic_history(
        OfflineStore(settings.offline_dir),
        definitions,
        name,
        entities=40,
        steps=60,
        step_s=20.0,
        seed=14,
        end=utcnow() + timedelta(hours=1),
        file_prefix="offline",
    )

    result = train_model(settings, definitions, name, "weekly refresh", registry=registry)

    assert result.version == "2"
    assert result.metrics["rows"] == 40 * 60
    assert result.metrics["holdout_rows"] == 480
    assert 0.7 < result.metrics["auc"] <= 1.0
    assert result.metrics["log_loss"] > 0
    assert result.previous_champion == "1"
    assert result.promoted, result.decision.reasons
    # The champion is scored on the new holdout too, where the flipped truth sinks it.
    [vs_champion] = [r for r in result.decision.reasons if "same-holdout auc" in r]
    assert float(vs_champion.split("auc ")[-1].split(" ")[0]) < 0.5
    assert [e.kind for e in result.events()] == ["registered", "promoted"]
    versions = {v.version: v for v in registry.list_versions(name)}
    assert set(versions) == {"1", "2"}
    assert versions["2"].aliases == ("champion",)
    assert versions["1"].aliases == ("previous_champion",)
    assert versions["2"].tags["reason"] == "weekly refresh"
    assert versions["2"].metrics["rows"] == 2400
    assert set(result.timings) == {"join_s", "train_s", "register_s", "total_s"}
    # The drift reference of the training set is stored with the version.
    text = registry.read_file(name, "2", DRIFT_REFERENCE)
    assert text is not None
    reference = DriftReference.from_json(text)
    # Keyed 'view.feature', as serve logs the inputs with each prediction.
    assert set(reference.columns) == {*definitions.model(name).features, PREDICTION}
    assert all(abs(sum(r.shares) - 1.0) < 1e-9 for r in reference.columns.values())
    # So is its model card, with the window, both models' metrics and every gate.
    card_text = registry.read_file(name, "2", MODEL_CARD)
    assert card_text is not None
    card = ModelCard.model_validate_json(card_text)  # stored with its version number
    assert (card.model, card.version, card.promoted) == (name, "2", True)
    assert (card.data.rows, card.data.holdout_rows) == (2400, 480)
    assert card.champion_version == "1" and card.champion is not None
    assert [g.name for g in card.gates if g.status == "fail"] == []
    assert {f.feature for f in card.feature_importance} == set(definitions.model(name).features)

    # A window since a time after all of this data: nothing to train on, nothing registered.
    with pytest.raises(NoTrainingData, match="as of"):
        train_model(
            settings, definitions, name, "window", registry=registry, since=time.time() + 86400
        )
    assert {v.version for v in registry.list_versions(name)} == {"1", "2"}


async def test_promote_and_rollback_move_the_champion(retrain_settings) -> None:  # type: ignore[no-untyped-def]
    """promote/rollback move the champion alias, remember the previous one and announce it."""
    settings = retrain_settings()
    registry = MlflowRegistry.from_settings(settings)
    name = load_definitions(settings.definitions).models[0].name
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1},
        lgb.Dataset(x, label=(x[:, 0] > 0).astype(float)),
        num_boost_round=3,
    )
    for auc in (0.7, 0.8):
        registry.register(name, booster, params={}, metrics={"auc": auc}, tags={"reason": "t"})
    publisher = MemoryPublisher()

    with pytest.raises(RollbackUnavailable, match="no 'previous_champion' alias"):
        await rollback_model(settings, name, registry=registry, publisher=publisher)

    await promote_version(settings, name, "1", registry=registry, publisher=publisher)
    move = await promote_version(settings, name, "2", registry=registry, publisher=publisher)
    assert (move.version, move.previous) == ("2", "1")
    assert registry.champion_version(name) == "2"

    move = await rollback_model(settings, name, registry=registry, publisher=publisher)
    assert (move.version, move.previous) == ("1", "2")
    assert registry.champion_version(name) == "1"
    aliases = {v.version: v.aliases for v in registry.list_versions(name)}
    assert aliases == {"1": ("champion",), "2": ("previous_champion",)}

    events = publisher.messages[settings.topics.models]
    assert [(e.kind, e.version) for e in events] == [  # type: ignore[attr-defined]
        ("promoted", "1"),
        ("promoted", "2"),
        ("rolled_back", "1"),
    ]
    assert events[-1].metrics == {"auc": 0.7}  # type: ignore[attr-defined]
    assert [k for k, _ in publisher.sent[settings.topics.models]] == [name] * 3


def test_no_outcomes_means_no_training(retrain_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An empty offline store is refused with NoTrainingData and registers nothing."""
    from services.retrain.errors import NoTrainingData

    settings = retrain_settings()
    definitions = load_definitions(settings.definitions)
    name = definitions.models[0].name
    registry = MlflowRegistry.from_settings(settings)
    with pytest.raises(NoTrainingData, match="holds no signals"):
        train_model(settings, definitions, name, "too early", registry=registry)
    assert registry.list_versions(name) == []


def test_development_training_keeps_the_bootstrap_history(retrain_settings) -> None:  # type: ignore[no-untyped-def]
    """In development a retrain before any real labels trains on the bootstrap history."""
    settings = retrain_settings(train_with_bootstrap_history=None)
    assert settings.environment == "development" and settings.includes_bootstrap_history
    definitions = load_definitions(settings.definitions)
    name = definitions.models[0].name
    registry = MlflowRegistry.from_settings(settings)
    bootstrap_models(settings, definitions, registry=registry)
    assert not OfflineStore(settings.offline_dir).files("outcomes")

    result = train_model(settings, definitions, name, "before real labels", registry=registry)

    assert result.version == "2"
    assert result.metrics["rows"] == 30 * 80
