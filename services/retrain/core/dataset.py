"""The label join: one entity's signals and outcomes become point-in-time training rows.

Pure pandas in, pandas out. It answers the labels the served-features join
(core/served_rows.py) leaves to it: `rows_for_entity` runs once per entity, in
process or on Ray Data (adapters/training_frame.py, adapters/ray_data.py); the unit
tests call it directly. Features come from
`libs.common.features.compute_view`, the function the streaming path calls, so a
training row and a served row of the same events are equal (no skew).
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from libs.common.definitions import Definitions, FeatureView, ModelDefinition
from libs.common.features import (
    EventHistory,
    FeatureVector,
    compute_view,
    model_columns,
    to_row,
)

LABEL = "label"
TS = "ts"
ENTITY = "entity_id"
OUTCOME_ID = "outcome_id"

# Entity and outcome ids in training frames: pandas' string dtype, what Arrow's
# `to_pandas` gives them (the Ray Data join's frames always had it).
ID_DTYPE = pd.StringDtype(na_value=np.nan)

KIND = "kind"
SIGNAL, OUTCOME, PREDICTION = "signal", "outcome", "prediction"

# One schema for signals, outcomes and predictions of an entity, so the three can be
# unioned and grouped by entity in one shuffle. Unused cells hold "" / NaN / 0, never
# None, so every block has the same Arrow types.
COMBINED_DTYPES: dict[str, str] = {
    KIND: "object",
    ENTITY: "object",
    "event_id": "object",
    TS: "float64",
    "source": "object",
    "schema_version": "int64",
    "fields_json": "object",
    LABEL: "float64",
    "prediction_id": "object",
}


@dataclass(frozen=True)
class JoinSpec:
    """What the join of one model needs, resolved once from the definitions (picklable).

    Attributes:
        model: the model definition (features, label horizon).
        views: the feature views the model reads, in first-use order.
        source_versions: source name -> the schema version whose signals count.
        retention_s: source name -> history the online state keeps of that source;
            older events are invisible, as they are in the streaming path.
    """

    model: ModelDefinition
    views: tuple[FeatureView, ...]
    source_versions: dict[str, int]
    retention_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, definitions: Definitions, model_name: str) -> JoinSpec:
        model = definitions.model(model_name)
        views = tuple(definitions.views_of_model(model))
        return cls(
            model=model,
            views=views,
            source_versions={v.source: definitions.source(v.source).version for v in views},
            retention_s={v.source: source_retention(definitions, v.source) for v in views},
        )

    @property
    def feature_columns(self) -> list[str]:
        return model_columns(self.model)

    @property
    def columns(self) -> list[str]:
        """Columns of a training frame: model inputs in order, then label, as-of, ids."""
        return [*self.feature_columns, LABEL, TS, ENTITY, OUTCOME_ID]


def source_retention(definitions: Definitions, source: str) -> float:
    """History the online state keeps of `source` (Definitions.retention_of)."""
    return definitions.retention_of(source)


def empty_rows(spec: JoinSpec) -> pd.DataFrame:
    """A training frame with no rows and the right columns and dtypes."""
    cols: dict[str, pd.Series] = {c: pd.Series(dtype="float64") for c in spec.feature_columns}
    cols[LABEL] = pd.Series(dtype="float64")
    cols[TS] = pd.Series(dtype="float64")
    cols[ENTITY] = pd.Series(dtype=ID_DTYPE)
    cols[OUTCOME_ID] = pd.Series(dtype=ID_DTYPE)
    return pd.DataFrame(cols)


def finish_frame(frame: pd.DataFrame, spec: JoinSpec) -> pd.DataFrame:
    """A training frame in canonical form: `spec.columns`, float64 numbers, string ids,
    ordered by as-of time then outcome id (joins and partitions arrive in any order).

    Arrow stores NaN as null, and a block whose column is all null comes back as object
    None: numbers are cast back to float64 (LightGBM rejects Arrow-backed dtypes).
    """
    if frame.empty:
        return empty_rows(spec)
    numeric = {c: "float64" for c in [*spec.feature_columns, LABEL, TS]}
    frame = frame[spec.columns].astype({**numeric, ENTITY: ID_DTYPE, OUTCOME_ID: ID_DTYPE})
    return frame.sort_values([TS, OUTCOME_ID], kind="stable").reset_index(drop=True)


def as_of_time(
    outcome_ts: float,
    prediction_id: str | None,
    prediction_times: Mapping[str, float],
    horizon_s: float,
) -> float:
    """When the features of a label are taken (DESIGN.md, label join).

    Args:
        outcome_ts: the outcome's event time, epoch seconds.
        prediction_id: the prediction the outcome names, if any.
        prediction_times: prediction id -> the time it was made (logged predictions).
        horizon_s: the model's label horizon.

    Returns:
        The named prediction's time when it was logged, else outcome time minus horizon.
    """
    if prediction_id and prediction_id in prediction_times:
        return prediction_times[prediction_id]
    return outcome_ts - horizon_s


def online_state(
    history: EventHistory, as_of: float, retention_s: float
) -> tuple[EventHistory, float] | None:
    """What the online store held for an entity's source at time `as_of`.

    The features service computes vectors as of the entity's newest event and keeps
    only events within `retention_s` of it (services/features; the memory and Redis
    stores trim `ts < newest - retention`). So at `as_of` serve reads the vector
    computed as of the last event at or before `as_of`, over that retained history.

    Returns:
        (retained history up to that event, the event's time), or None when the
        entity had no event of the source yet (no vector online).
    """
    hi = bisect.bisect_right(history.times, as_of)
    if hi == 0:
        return None
    newest = history.times[hi - 1]
    lo = bisect.bisect_left(history.times, newest - retention_s, 0, hi)
    return EventHistory(times=history.times[lo:hi], rows=history.rows[lo:hi]), newest


def _histories(spec: JoinSpec, signals: pd.DataFrame) -> dict[str, EventHistory]:
    histories: dict[str, EventHistory] = {}
    for source, version in spec.source_versions.items():
        mine = signals[(signals["source"] == source) & (signals["schema_version"] == version)]
        histories[source] = EventHistory.from_events(
            [
                (eid, float(ts), json.loads(fj))
                for eid, ts, fj in zip(mine["event_id"], mine[TS], mine["fields_json"], strict=True)
            ]
        )
    return histories


def entity_rows(
    spec: JoinSpec,
    entity_id: str,
    signals: pd.DataFrame,
    outcomes: pd.DataFrame,
    predictions: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Training rows of one entity: one per outcome, with the features serve saw then.

    Each outcome's join time comes from `as_of_time`; each view's features are the
    vector the online store held at that time (`online_state`): computed by
    `compute_view` as of the entity's last event at or before the join time.

    Args:
        spec: the model's join spec.
        entity_id: the entity all frames speak about.
        signals: offline-store signal rows (event_id, source, schema_version, ts,
            fields_json); other sources and schema versions are ignored.
        outcomes: outcome rows (event_id, ts, label, prediction_id) of this model.
        predictions: logged prediction rows (event_id = prediction id, ts), if any.

    Returns:
        `spec.columns`; duplicates (same event id) count once; an outcome whose
        entity had no signal of any of the model's sources by its join time is dropped
        (serve answers such a cold start with the fallback; it teaches the model nothing).
        The `ts` column is the join time.
    """
    if outcomes.empty or signals.empty:
        return empty_rows(spec)
    signals = signals.drop_duplicates("event_id")
    outcomes = outcomes.drop_duplicates("event_id").sort_values(TS, kind="stable")
    prediction_times: dict[str, float] = {}
    if predictions is not None and not predictions.empty:
        dedup = predictions.drop_duplicates("event_id")
        prediction_times = dict(zip(dedup["event_id"], dedup[TS].astype(float), strict=True))
    histories = _histories(spec, signals)

    records: list[list[float]] = []
    labels: list[float] = []
    times: list[float] = []
    ids: list[str] = []
    horizon = spec.model.label_horizon_s
    for eid, ts, label, pid in zip(
        outcomes["event_id"], outcomes[TS], outcomes[LABEL], outcomes["prediction_id"], strict=True
    ):
        as_of = as_of_time(
            float(ts), pid if isinstance(pid, str) else None, prediction_times, horizon
        )
        online = {
            src: online_state(h, as_of, spec.retention_s[src]) for src, h in histories.items()
        }
        if not any(online.values()):
            continue
        values: dict[str, FeatureVector] = {}
        for view in spec.views:
            state = online[view.source]
            # No event of the view's source yet: serve has no vector, the row has NaNs.
            values[view.name] = compute_view(view, *state) if state else {}
        records.append(to_row(spec.model, values))
        labels.append(float(label))
        times.append(as_of)
        ids.append(str(eid))
    if not records:
        return empty_rows(spec)
    frame = pd.DataFrame(np.asarray(records, dtype="float64"), columns=spec.feature_columns)
    frame[LABEL] = labels
    frame[TS] = times
    frame[ENTITY] = entity_id
    frame[OUTCOME_ID] = ids
    return frame


def rows_for_entity(group: pd.DataFrame, spec: JoinSpec) -> pd.DataFrame:
    """`entity_rows` over a combined group (one entity, rows tagged by `kind`).

    This is the function Ray Data maps over `groupby(entity_id)`.
    """
    if group.empty:
        return empty_rows(spec)
    kinds = group[KIND]
    return entity_rows(
        spec,
        str(group[ENTITY].iloc[0]),
        group[kinds == SIGNAL],
        group[kinds == OUTCOME],
        group[kinds == PREDICTION],
    )


# Offline-store rows -> combined rows (the three read paths before the union) ------


def _combined(batch: pd.DataFrame, kind: str) -> pd.DataFrame:
    n = len(batch)
    out = pd.DataFrame(
        {
            KIND: [kind] * n,
            ENTITY: batch[ENTITY].astype(str).to_numpy(),
            "event_id": batch["event_id"].astype(str).to_numpy(),
            TS: batch[TS].astype("float64").to_numpy(),
            "source": batch["source"].astype(str).to_numpy() if "source" in batch else "",
            "schema_version": (
                batch["schema_version"].astype("int64").to_numpy()
                if "schema_version" in batch
                else 0
            ),
            "fields_json": batch["fields_json"].astype(str).to_numpy()
            if "fields_json" in batch
            else "",
            LABEL: batch[LABEL].astype("float64").to_numpy() if LABEL in batch else math.nan,
            "prediction_id": (
                batch["prediction_id"].fillna("").astype(str).to_numpy()
                if "prediction_id" in batch
                else ""
            ),
        }
    )
    return out.astype(COMBINED_DTYPES)


def combined_signals(batch: pd.DataFrame, spec: JoinSpec) -> pd.DataFrame:
    """Signal rows of the model's sources at their current schema versions."""
    keep = pd.Series(False, index=batch.index)
    for source, version in spec.source_versions.items():
        keep |= (batch["source"] == source) & (batch["schema_version"] == version)
    return _combined(batch[keep], SIGNAL)


def combined_outcomes(batch: pd.DataFrame, spec: JoinSpec) -> pd.DataFrame:
    """Outcome rows labelling this model."""
    return _combined(batch[batch["model"] == spec.model.name], OUTCOME)


def combined_predictions(batch: pd.DataFrame, spec: JoinSpec) -> pd.DataFrame:
    """Logged predictions of this model (their times anchor the label join)."""
    return _combined(batch[batch["model"] == spec.model.name], PREDICTION)
