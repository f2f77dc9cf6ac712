"""The companion model: which inputs it takes, how it is trained, what a version stores."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from libs.common.definitions import ModelDefinition, load_definitions, parse_definitions
from libs.common.errors import DefinitionsError
from libs.common.offline import OfflineStore
from libs.common.registry.mlflow import COMPANION_FILE, COMPANION_META
from services.retrain.adapters.training_frame import build_training_frame
from services.retrain.bootstrap import write_synthetic_history
from services.retrain.core.companion import (
    missing_shares,
    select_companion_features,
    train_companion,
)
from services.retrain.core.dataset import LABEL, TS, JoinSpec
from services.retrain.core.model_card import ModelCard, gain_importance
from services.retrain.core.training import score, train_booster
from services.retrain.settings import RetrainSettings
from services.retrain.train import train_model
from services.serve.core.companion import companion_predictor
from services.serve.core.predict import Predictor

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("importance", "missing", "max_features", "max_missing", "chosen"),
    [
        # strongest first, capped at max_features
        ({"v.a": 0.5, "v.b": 0.3, "v.c": 0.2}, {}, 2, 1.0, ["v.a", "v.b"]),
        # an input missing too often is passed over for a weaker, present one
        ({"v.a": 0.6, "v.b": 0.3, "v.c": 0.1}, {"v.a": 0.4}, 2, 0.05, ["v.b", "v.c"]),
        # an input the main model never split on carries nothing
        ({"v.a": 1.0, "v.b": 0.0}, {"v.a": 0.0, "v.b": 0.0}, 4, 0.05, ["v.a"]),
        # ties in gain are broken by name, so the choice is deterministic
        ({"v.b": 0.5, "v.a": 0.5}, {"v.a": 0.0, "v.b": 0.0}, 1, 0.05, ["v.a"]),
        # nothing robust: no companion
        ({"v.a": 1.0}, {"v.a": 0.9}, 4, 0.05, []),
    ],
)
def test_companion_inputs_are_the_strongest_robust_ones(
    importance: dict[str, float],
    missing: dict[str, float],
    max_features: int,
    max_missing: float,
    chosen: list[str],
) -> None:
    """Top inputs by the main model's gain among those missing rarely enough."""
    full_missing = {ref: missing.get(ref, 0.0) for ref in importance}
    assert (
        select_companion_features(
            importance, full_missing, max_features=max_features, max_missing=max_missing
        )
        == chosen
    )


def test_missing_shares_count_none_and_nan() -> None:
    """A missing value is None (categories) or NaN (numbers)."""
    frame = pd.DataFrame({"v__x": [1.0, np.nan, 3.0, np.nan], "v__s": ["a", None, "b", "c"]})
    assert missing_shares(frame, ["v.x", "v.s"]) == {"v.x": 0.5, "v.s": 0.25}


def _model(**companion: Any) -> ModelDefinition:
    """A model over a strong-but-often-missing input, two robust ones and noise."""
    return parse_definitions(
        {
            "sources": [
                {
                    "name": "s",
                    "entity": "e",
                    "fields": {k: {"type": "float"} for k in ("a", "b", "c", "n")},
                }
            ],
            "feature_views": [
                {
                    "name": "v",
                    "source": "s",
                    "features": [
                        {"name": f"{k}_last", "field": k, "agg": "last"}
                        for k in ("a", "b", "c", "n")
                    ],
                }
            ],
            "models": [
                {
                    "name": "m",
                    "features": ["v.a_last", "v.b_last", "v.c_last", "v.n_last"],
                    "fallback": {"score": 0.2, "companion": companion},
                }
            ],
        }
    ).model("m")


def _frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """`a` decides most, but is missing in 30% of rows; `b` and `c` also matter."""
    rng = np.random.default_rng(seed)
    a, b, c, noise = rng.normal(size=(4, n))
    logit = 3.0 * a + 1.5 * b + 1.0 * c
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    a[rng.random(n) < 0.3] = np.nan
    return pd.DataFrame(
        {
            "v__a_last": a,
            "v__b_last": b,
            "v__c_last": c,
            "v__n_last": noise,
            LABEL: y,
            TS: np.arange(n),
        }
    )


def _main(frame: pd.DataFrame, model: ModelDefinition) -> dict[str, float]:
    trained = train_booster(frame, model)
    return gain_importance(trained.booster, dict(zip(trained.columns, model.features, strict=True)))


def test_auto_companion_is_small_reads_the_robust_inputs_and_predicts() -> None:
    """The companion skips the often-missing input, keeps few small trees and beats chance."""
    model = _model(max_features=2)
    frame = _frame()
    importance = _main(frame, model)
    assert next(iter(importance)) == "v.a_last"  # the main model's strongest input...
    companion = train_companion(frame, model, importance)
    assert companion is not None
    assert companion.features == ["v.b_last", "v.c_last"]  # ...is missing too often
    assert companion.booster.feature_name() == ["v__b_last", "v__c_last"]
    assert companion.booster.num_trees() <= 10
    tree_leaves = [t["num_leaves"] for t in companion.booster.dump_model()["tree_info"]]
    assert max(tree_leaves) <= 7
    # Same holdout as the main model (the newest 20%), and it learned something there.
    assert companion.metrics.holdout_rows == 600
    assert companion.metrics.auc > 0.7
    meta = json.loads(companion.to_json())
    assert meta["columns"] == ["v__b_last", "v__c_last"]
    assert meta["metrics"]["auc"] == pytest.approx(companion.metrics.auc, abs=1e-6)
    assert meta["missing"] == {"v.b_last": 0.0, "v.c_last": 0.0}


def test_listed_companion_inputs_are_taken_as_given() -> None:
    """A list in the definitions overrides the automatic choice."""
    model = _model(features=["v.n_last", "v.a_last"])
    companion = train_companion(_frame(), model, {})
    assert companion is not None
    assert companion.features == ["v.a_last", "v.n_last"]  # model input order
    assert companion.selection == "listed"


def test_disabled_companion_or_stray_inputs() -> None:
    """No companion when disabled; listed inputs that are not the model's are refused
    when the definitions load, naming the stray input."""
    assert train_companion(_frame(), _model(enabled=False), {"v.a_last": 1.0}) is None
    with pytest.raises(DefinitionsError, match=r"v\.zz_last"):
        _model(features=["v.zz_last"])


class _CapturingRegistry:
    """Records what train_model registers; no champion yet."""

    def __init__(self) -> None:
        self.registered: dict[str, Any] = {}

    def register(self, model: str, booster: lgb.Booster, **kwargs: Any) -> str:
        version_files: Callable[[str], dict[str, str]] = kwargs["version_files"]
        self.registered = {"booster": booster, **kwargs, "version_files": version_files("1")}
        return "1"

    def champion_version(self, model: str) -> str | None:
        return None

    def promote(self, model: str, version: str) -> None:
        self.registered["promoted"] = version


def test_a_trained_version_registers_its_companion(tmp_path: Path) -> None:
    """train_model stores companion.lgb (the chosen columns), companion.json and the card entry."""
    definitions = load_definitions(REPO / "signalops.yaml")
    store = OfflineStore(tmp_path / "offline")
    write_synthetic_history(
        store, definitions, "default", entities=30, steps=80, step_s=30.0, seed=3
    )
    registry = _CapturingRegistry()
    settings = RetrainSettings(data_dir=tmp_path / "data")
    result = train_model(
        settings,
        definitions,
        "default",
        "test",
        registry=registry,  # type: ignore[arg-type]  # only what train_model calls
        offline_root=store.root,
    )
    files = registry.registered["files"]
    meta = json.loads(files[COMPANION_META])
    companion = lgb.Booster(model_str=files[COMPANION_FILE])
    assert companion.feature_name() == meta["columns"]
    assert 1 <= len(meta["columns"]) <= 4
    assert companion.num_trees() <= 10
    card = ModelCard.model_validate_json(registry.registered["version_files"]["model_card.json"])
    assert card.companion is not None and card.companion.features == meta["features"]
    assert card.companion.metrics.auc == pytest.approx(result.metrics["companion_auc"])
    assert result.metrics["companion_auc"] > 0.6
    # The chosen inputs are the main model's strongest by gain among the robust ones.
    model = definitions.model("default")
    frame = build_training_frame(store, JoinSpec.of(definitions, "default"))
    expected = select_companion_features(
        {i.feature: i.gain for i in card.feature_importance},
        missing_shares(frame, model.features),
        max_features=4,
        max_missing=0.05,
    )
    assert sorted(meta["features"]) == sorted(expected)
    assert meta["features"] == [ref for ref in model.features if ref in expected]


def test_a_categorical_companion_input_scores_alike_in_training_and_serve() -> None:
    """A companion reading a category is encoded through the version's codes in serve,
    giving the scores training measured."""
    zones = ["north", "east", "south", "west"]
    definitions = parse_definitions(
        {
            "sources": [
                {
                    "name": "s",
                    "entity": "e",
                    "fields": {"zone": {"type": "str"}, "x": {"type": "float"}},
                }
            ],
            "feature_views": [
                {
                    "name": "v",
                    "source": "s",
                    "features": [
                        {"name": "zone_last", "field": "zone", "agg": "last"},
                        {"name": "x_last", "field": "x", "agg": "last"},
                    ],
                }
            ],
            "models": [
                {
                    "name": "m",
                    "features": ["v.x_last", "v.zone_last"],
                    "lightgbm": {"objective": "binary", "min_data_per_group": 10},
                    "fallback": {"companion": {"features": ["v.zone_last"]}},
                }
            ],
        }
    )
    model = definitions.model("m")
    rng = np.random.default_rng(0)
    n = 2000
    zone = rng.choice(zones, n).astype(object)
    y = (np.isin(zone, ["east", "west"]) ^ (rng.random(n) < 0.05)).astype(float)
    frame = pd.DataFrame(
        {"v__x_last": rng.normal(size=n), "v__zone_last": zone, LABEL: y, TS: np.arange(n)}
    )
    spec = JoinSpec.of(definitions, "m")
    main = train_booster(frame, model, categories=spec.categories)
    companion = train_companion(frame, model, {}, categories=spec.categories)
    assert companion is not None and companion.metrics.auc > 0.85

    served = Predictor(main.booster, main.columns, main.encoding)
    loaded = companion_predictor(companion.model_text(), served)
    rows = main.holdout[main.columns].head(20).to_numpy(dtype=object).tolist()
    at = main.columns.index("v__zone_last")
    np.testing.assert_allclose(
        loaded.predict([[r[at]] for r in rows]),
        score(companion.booster, main.holdout.head(20), ["v__zone_last"], main.encoding),
    )
