"""Categorical features in training: str in frames, codes for LightGBM, codes kept per version."""

from __future__ import annotations

import json
from typing import Any, cast

import lightgbm as lgb
import numpy as np
import pandas as pd

from libs.common.definitions import parse_definitions
from libs.common.features import CATEGORIES_FILE, CategoryEncoding
from libs.common.registry import Registry
from services.retrain.core.dataset import (
    ENTITY,
    LABEL,
    OUTCOME_ID,
    TS,
    JoinSpec,
    empty_rows,
    finish_frame,
)
from services.retrain.core.served_rows import logged_inputs, served_rows
from services.retrain.core.slices import MISSING, cut_slices
from services.retrain.core.training import holdout_auc, score, train_booster
from services.retrain.train import _champion_score, drift_reference

STATUS = ["ok", "warn", "fail"]
DEFINITIONS: dict[str, Any] = {
    "sources": [
        {
            "name": "s",
            "entity": "device",
            "fields": {
                "status": {"type": "str", "allowed": STATUS},
                "zone": {"type": "str"},
                "x": {"type": "float"},
            },
        }
    ],
    "feature_views": [
        {
            "name": "v",
            "source": "s",
            "features": [
                {"name": "status_last", "field": "status", "agg": "last"},
                {"name": "zone_last", "field": "zone", "agg": "last"},
                {"name": "x_last", "field": "x", "agg": "last"},
            ],
        }
    ],
    "models": [
        {
            "name": "m",
            "features": ["v.x_last", "v.status_last", "v.zone_last"],
            "num_boost_round": 30,
            "lightgbm": {"objective": "binary", "num_leaves": 7, "min_data_per_group": 10},
        }
    ],
}
ZONES = ["north", "east", "south", "west", "centre"]


def _spec() -> JoinSpec:
    return JoinSpec.of(parse_definitions(DEFINITIONS), "m")


def _frame(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Rows whose label is decided by the zone category (east and west), with noise."""
    rng = np.random.default_rng(seed)
    zone = rng.choice(ZONES, n).astype(object)
    zone[rng.random(n) < 0.05] = None
    truth = np.isin(zone, ["east", "west"])
    flip = rng.random(n) < 0.05
    return pd.DataFrame(
        {
            "v__x_last": rng.normal(size=n),
            "v__status_last": rng.choice(STATUS, n).astype(object),
            "v__zone_last": zone,
            LABEL: (truth ^ flip).astype("float64"),
            TS: np.arange(n, dtype="float64"),
            ENTITY: [f"e{i % 50}" for i in range(n)],
            OUTCOME_ID: [f"o{i}" for i in range(n)],
        }
    )


def test_join_spec_knows_its_categorical_columns_and_frames_keep_them_as_str() -> None:
    """Categorical columns are object in empty and finished frames; numbers stay float64."""
    spec = _spec()
    assert spec.categories == {"v__status_last": tuple(STATUS), "v__zone_last": None}
    assert empty_rows(spec)["v__zone_last"].dtype == object
    raw = _frame(4).astype({"v__x_last": object})
    raw.loc[1, "v__zone_last"] = np.nan  # Arrow nulls come back as NaN or None
    finished = finish_frame(raw, spec)
    assert finished["v__x_last"].dtype == "float64"
    assert finished["v__zone_last"].dtype == object
    assert finished["v__zone_last"].iloc[1] is None
    assert all(isinstance(v, str) for v in finished["v__status_last"])


def test_a_categorical_column_that_decides_the_label_is_learned() -> None:
    """The booster splits on the category codes; scoring through the encoding gives a high AUC."""
    spec = _spec()
    frame = finish_frame(_frame(), spec)
    trained = train_booster(frame, spec.model, categories=spec.categories)
    assert trained.encoding.categories == {
        "v__status_last": tuple(STATUS),  # declared order, not sorted
        "v__zone_last": ("centre", "east", "north", "south", "west"),  # sorted, as seen
    }
    assert trained.params["categorical_feature"] == ["v__status_last", "v__zone_last"]
    assert trained.metrics.auc > 0.9, trained.metrics
    # LightGBM recorded categorical splits (decision type 1) in the model itself.
    dump = trained.booster.dump_model()
    assert any(t["tree_structure"].get("decision_type") == "==" for t in dump["tree_info"])
    # The holdout keeps str; scoring it through the version's encoding is what the metrics did.
    assert trained.holdout["v__zone_last"].dtype == object
    auc = holdout_auc(trained.booster, trained.holdout, trained.columns, trained.encoding)
    assert auc == trained.metrics.auc
    # A category first seen after training is answered as missing.
    new = trained.holdout.head(1).assign(v__zone_last="atlantis")
    missing = trained.holdout.head(1).assign(v__zone_last=None)
    np.testing.assert_allclose(
        score(trained.booster, new, trained.columns, trained.encoding),
        score(trained.booster, missing, trained.columns, trained.encoding),
    )


def test_categories_are_inferred_from_the_frame_when_not_declared() -> None:
    """Without `categories`, the frame's str feature columns are categorical (sorted values)."""
    spec = _spec()
    trained = train_booster(finish_frame(_frame(), spec), spec.model)
    assert trained.encoding.categories["v__status_last"] == ("fail", "ok", "warn")
    assert trained.metrics.auc > 0.9


class _Registry:
    """A champion booster and its stored files."""

    def __init__(self, booster: lgb.Booster, files: dict[str, str]) -> None:
        self.booster, self.files = booster, files

    def load_booster(self, model: str, version: str) -> lgb.Booster:
        return self.booster

    def read_file(self, model: str, version: str, name: str) -> str | None:
        return self.files.get(name)


def test_the_champion_scores_through_its_own_encoding() -> None:
    """A champion is judged with the codes stored with its version, not the candidate's."""
    spec = _spec()
    trained = train_booster(finish_frame(_frame(), spec), spec.model, categories=spec.categories)
    # The champion's codes of the zones are another order: scored with the candidate's
    # codes it would look poor, with its own it matches the candidate.
    reordered = CategoryEncoding(
        {
            **trained.encoding.categories,
            "v__zone_last": ("west", "south", "north", "east", "centre"),
        }
    )
    champion_frame = finish_frame(_frame(seed=1), spec)
    champion = train_booster(champion_frame, spec.model, categories=spec.categories)
    files = {CATEGORIES_FILE: reordered.to_json()}
    x = reordered.matrix(champion_frame, trained.columns)
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "min_data_per_group": 10},
        lgb.Dataset(
            x,
            label=champion_frame[LABEL].to_numpy(),
            feature_name=trained.columns,
            categorical_feature=reordered.columns,
        ),
        num_boost_round=30,
    )
    result = _champion_score(cast(Registry, _Registry(booster, files)), "m", "3", trained, [])
    assert result.evaluation is not None and result.evaluation.auc > 0.9
    # A champion whose version stored no encoding cannot be judged on these inputs.
    bare = _champion_score(cast(Registry, _Registry(champion.booster, {})), "m", "3", trained, [])
    assert bare.evaluation is None and "categorical inputs []" in bare.note


def test_the_drift_reference_leaves_categories_out() -> None:
    """Quantile bins need numbers: categorical inputs get no drift reference."""
    spec = _spec()
    frame = finish_frame(_frame(), spec)
    trained = train_booster(frame, spec.model, categories=spec.categories)
    reference = drift_reference(trained, frame, spec.model)
    assert set(reference.columns) == {"v.x_last", "prediction"}


def test_a_categorical_slice_is_one_per_category_plus_missing() -> None:
    """Slices of a categorical feature are its categories, not quantile bins."""
    values = np.array(["b", "a", None, "b"], dtype=object)
    slices = cut_slices({"v.zone_last": values})
    assert [(s.label, s.mask.tolist()) for s in slices] == [
        ("= a", [False, True, False, False]),
        ("= b", [True, False, False, True]),
        (MISSING, [False, False, True, False]),
    ]


def test_logged_categories_are_read_back_as_str() -> None:
    """A logged answer's category is a training value as is; numbers are still parsed."""
    spec = _spec()
    logged = pd.DataFrame(
        {
            "event_id": ["p1", "p2"],
            ENTITY: ["e1", "e2"],
            TS: [1.0, 2.0],
            "variant": ["champion", "champion"],
            "features_json": [
                json.dumps({"v.x_last": 1.5, "v.status_last": "warn", "v.zone_last": "east"}),
                json.dumps({"v.x_last": None, "v.status_last": None, "v.zone_last": "west"}),
            ],
        }
    )
    inputs = logged_inputs(logged, spec)
    assert inputs["v__x_last"].dtype == "float64" and np.isnan(inputs["v__x_last"].iloc[1])
    assert inputs["v__status_last"].tolist() == ["warn", None]
    assert inputs["v__zone_last"].tolist() == ["east", "west"]
    assert inputs["usable"].tolist() == [True, True]
    # A label naming the first answer trains on its logged category.
    outcomes = pd.DataFrame(
        {"event_id": ["o1"], ENTITY: ["e1"], TS: [5.0], LABEL: [1.0], "prediction_id": ["p1"]}
    )
    rows = served_rows(spec, outcomes, logged).rows
    assert rows["v__zone_last"].tolist() == ["east"] and rows["v__x_last"].tolist() == [1.5]
