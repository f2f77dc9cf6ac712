"""A served version whose scores follow its first input, and a labelled stream for it
whose concept flips at a given row: what the monitor integration tests feed the broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import lightgbm as lgb
import numpy as np

from libs.common.definitions import ModelDefinition
from libs.common.features import model_columns
from libs.common.registry import DRIFT_REFERENCE, MlflowRegistry
from libs.common.schemas import ModelRef, Outcome, PredictionMade
from libs.common.settings import Topics
from services.retrain.core.drift.reference import PREDICTION, DriftReference


@dataclass
class ConceptStream:
    """Rows `start..start+n` of the stream: label = (first input > 0), flipped from
    row `change` on; one key, so predictions and labels keep their order."""

    model: ModelDefinition
    version: str
    booster: lgb.Booster
    topics: Topics
    t0: datetime
    change: int
    rng: np.random.Generator

    @classmethod
    def register(
        cls,
        registry: MlflowRegistry,
        model: ModelDefinition,
        topics: Topics,
        *,
        t0: datetime,
        change: int,
        seed: int,
    ) -> ConceptStream:
        """Train the version on 4,000 rows and register it with its drift reference
        (keyed 'view.feature', as training writes it and serve logs the inputs)."""
        rng = np.random.default_rng(seed)
        columns = model_columns(model)
        x = rng.normal(size=(4000, len(columns)))
        booster = lgb.train(
            {"objective": "binary", "verbose": -1, "num_leaves": 7},
            lgb.Dataset(x, (x[:, 0] > 0).astype(float), feature_name=columns),
            num_boost_round=20,
        )
        reference = DriftReference.of(
            {**{f: x[:, i] for i, f in enumerate(model.features)}, PREDICTION: booster.predict(x)}
        )
        version = registry.register(
            model.name,
            booster,
            params={},
            metrics={},
            tags={},
            files={DRIFT_REFERENCE: reference.to_json()},
        )
        return cls(model, version, booster, topics, t0, change, rng)

    def rows(self, start: int, n: int) -> list[tuple[str, Any, str]]:
        """Each row's prediction (scored by the version) then its label naming it."""
        xs = self.rng.normal(size=(n, len(self.model.features)))
        items: list[tuple[str, Any, str]] = []
        for i, (row, score) in enumerate(zip(xs, self.booster.predict(xs), strict=True), start):
            at = self.t0 + timedelta(seconds=i)
            p = PredictionMade(
                entity_id=f"e{i}",
                event_time=at,
                model=ModelRef(name=self.model.name, version=self.version, variant="champion"),
                score=float(score),
                features=dict(zip(self.model.features, row.tolist(), strict=True)),
            )
            o = Outcome(
                model=self.model.name,
                entity_id=p.entity_id,
                label=float((row[0] > 0) != (i >= self.change)),
                prediction_id=p.event_id,
                event_time=at,
            )
            items += [(self.topics.predictions, p, "k"), (self.topics.outcomes, o, "k")]
        return items
