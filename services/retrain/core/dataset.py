"""The label join over signals: the vector serve could read at each label's query time.

Pure pandas in, pandas out. It answers the labels the served-features join
(core/served_rows.py) leaves to it by replaying the offline store's signals through
the feature engine (`libs.common.features.replay.vectors_at`), the code the features
service runs: a training row and a served vector of the same events are equal (no
skew), and an event counts only once it had arrived at ingest by the query time.
Vectorised over all labels; adapters/training_frame.py runs it in this process, and
adapters/ray_data.py per entity-hash bucket on Ray Data for large inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from libs.common.definitions import Definitions, FeatureView, ModelDefinition
from libs.common.features import declared_categories, model_columns
from libs.common.features.plan import ViewPlan
from libs.common.features.replay import ARRIVAL, AS_OF, AT, OFFSET, PARTITION, vectors_at

LABEL = "label"
TS = "ts"
ENTITY = "entity_id"
OUTCOME_ID = "outcome_id"
EVENT_ID = "event_id"
PREDICTION_ID = "prediction_id"
SEEN = "seen"
BY_EVENT_TIME = "by_event_time"  # a label naming no prediction joins by event time
TOPIC = "topic"

# Entity and outcome ids in training frames: pandas' string dtype, what Arrow's
# `to_pandas` gives them (the Ray Data join's frames always had it).
ID_DTYPE = pd.StringDtype(na_value=np.nan)
# Categorical model inputs (`last` of a str field) in training frames: plain object
# columns of str, None when missing, encoded to codes only at training
# (libs/common/features/categories.py).
CATEGORY_DTYPE = "object"

SIGNAL_COLUMNS = [
    EVENT_ID,
    ENTITY,
    TS,
    ARRIVAL,
    TOPIC,
    PARTITION,
    OFFSET,
    "fields_json",
    "source",
    "schema_version",
]
"""What the join reads of a signal row (libs.common.offline SIGNALS schema)."""


@dataclass(frozen=True)
class JoinSpec:
    """What the join of one model needs, resolved once from the definitions (picklable).

    Attributes:
        model: the model definition (features, label horizon).
        views: the feature views the model reads, in first-use order.
        source_versions: source name -> the schema version whose signals count.
        plans: view name -> the compiled view the engine replays.
        categories: categorical column (`last` of a str field) -> its field's declared
            `allowed` values, or None (`declared_categories`); these columns hold str.
    """

    model: ModelDefinition
    views: tuple[FeatureView, ...]
    source_versions: dict[str, int]
    plans: dict[str, ViewPlan] = field(default_factory=dict)
    categories: dict[str, tuple[str, ...] | None] = field(default_factory=dict)

    @classmethod
    def of(cls, definitions: Definitions, model_name: str) -> JoinSpec:
        model = definitions.model(model_name)
        views = tuple(definitions.views_of_model(model))
        return cls(
            model=model,
            views=views,
            source_versions={v.source: definitions.source(v.source).version for v in views},
            plans={v.name: ViewPlan.of(v, definitions.source(v.source)) for v in views},
            categories=declared_categories(definitions, model),
        )

    @property
    def feature_columns(self) -> list[str]:
        return model_columns(self.model)

    @property
    def categorical_columns(self) -> list[str]:
        """Model inputs that are categories: str (object) in training frames."""
        return list(self.categories)

    @property
    def columns(self) -> list[str]:
        """Columns of a training frame: model inputs in order, then label, as-of, ids."""
        return [*self.feature_columns, LABEL, TS, ENTITY, OUTCOME_ID]


def empty_rows(spec: JoinSpec) -> pd.DataFrame:
    """A training frame with no rows and the right columns and dtypes."""
    cols: dict[str, pd.Series] = {
        c: pd.Series(dtype=CATEGORY_DTYPE if c in spec.categories else "float64")
        for c in spec.feature_columns
    }
    cols[LABEL] = pd.Series(dtype="float64")
    cols[TS] = pd.Series(dtype="float64")
    cols[ENTITY] = pd.Series(dtype=ID_DTYPE)
    cols[OUTCOME_ID] = pd.Series(dtype=ID_DTYPE)
    return pd.DataFrame(cols)


def as_categories(values: pd.Series) -> pd.Series:
    """A categorical column as training frames hold it: object, str values, missing as None."""
    data = values.to_numpy(dtype=object)
    return pd.Series(
        [v if isinstance(v, str) else None for v in data], index=values.index, dtype=CATEGORY_DTYPE
    )


def finish_frame(frame: pd.DataFrame, spec: JoinSpec) -> pd.DataFrame:
    """A training frame in canonical form: `spec.columns`, float64 numbers, object
    categories (str, missing as None), string ids, ordered by as-of time then outcome id
    (joins and partitions arrive in any order).

    Arrow stores NaN as null, and a block whose column is all null comes back as object
    None: numbers are cast back to float64 (LightGBM rejects Arrow-backed dtypes).
    Categories stay str until training encodes them (`CategoryEncoding`).
    """
    if frame.empty:
        return empty_rows(spec)
    numeric = {c: "float64" for c in [*spec.feature_columns, LABEL, TS] if c not in spec.categories}
    frame = frame[spec.columns].astype({**numeric, ENTITY: ID_DTYPE, OUTCOME_ID: ID_DTYPE})
    for c in spec.categorical_columns:
        frame[c] = as_categories(frame[c])
    return frame.sort_values([TS, OUTCOME_ID], kind="stable").reset_index(drop=True)


def query_times(pending: pd.DataFrame, anchors: pd.DataFrame, horizon_s: float) -> pd.DataFrame:
    """When each outcome's features are taken (DESIGN.md, label join), vectorised.

    Args:
        pending: outcomes for the signal join (event_id, entity_id, ts, label,
            prediction_id; "" or None when no prediction is named).
        anchors: the logged answers they name (event_id = prediction id, entity_id, ts).
        horizon_s: the model's label horizon.

    Returns:
        `pending`'s rows, in order, with `at`: the named answer's time when it is in
        `anchors`, label time minus `horizon_s` when no prediction is named. An outcome
        naming an answer `anchors` lacks is left out (what serve saw is unknown;
        served_rows drops and counts those before). Index 0..n-1.
    """
    named = pending[PREDICTION_ID].fillna("").astype(str).to_numpy(dtype=object)
    times = anchors.drop_duplicates(EVENT_ID).set_index(EVENT_ID)[TS].astype("float64")
    anchored_at = pd.Series(named).map(times).to_numpy(dtype="float64")
    unnamed = named == ""
    at = np.where(unnamed, pending[TS].to_numpy(dtype="float64") - horizon_s, anchored_at)
    keep = unnamed | ~np.isnan(anchored_at)
    return (
        pending[keep].assign(**{AT: at[keep], BY_EVENT_TIME: unnamed[keep]}).reset_index(drop=True)
    )


def as_if_arrived_in_event_time(events: pd.DataFrame) -> pd.DataFrame:
    """`events` replayed as if each had arrived at its event time, in event-time order.

    The rule for a label that names no prediction: there was no answer whose moment
    to reproduce, so its features are the classic point-in-time ones, every event
    stamped at or before its time (a backfilled history's labels join the backfilled
    signals, which arrived later than their own times).
    """
    return events.assign(
        **{
            ARRIVAL: events[TS].to_numpy(dtype="float64"),
            PARTITION: np.full(len(events), -1, dtype="int64"),
            OFFSET: np.full(len(events), -1, dtype="int64"),
        }
    )


def current_signals(spec: JoinSpec, signals: pd.DataFrame) -> pd.DataFrame:
    """The signals that count: the model's sources at their current schema versions,
    each record once, with lineage filled in.

    Records consumed from Kafka count once per (topic, partition, offset), others once
    per event id, the first in the store's order kept (as `OfflineStore.read` does).
    A row written before lineage was recorded arrived at its event time and is not
    from Kafka (partition and offset -1).
    """
    keep = np.zeros(len(signals), dtype=bool)
    source = signals["source"].to_numpy(dtype=object)
    version = signals["schema_version"].to_numpy()
    for name, current in spec.source_versions.items():
        keep |= (source == name) & (version == current)
    out = signals[keep]
    ts = out[TS].to_numpy(dtype="float64")
    arrival = out[ARRIVAL].to_numpy(dtype="float64")
    out = out.assign(
        **{
            ARRIVAL: np.where(np.isnan(arrival), ts, arrival),
            TOPIC: out[TOPIC].fillna("").astype(str).to_numpy(dtype=object),
            PARTITION: out[PARTITION].fillna(-1).to_numpy(dtype="int64"),
            OFFSET: out[OFFSET].fillna(-1).to_numpy(dtype="int64"),
        }
    )
    kafka = out[OFFSET].to_numpy() >= 0
    repeated = np.zeros(len(out), dtype=bool)
    repeated[kafka] = out[kafka].duplicated([TOPIC, PARTITION, OFFSET]).to_numpy()
    repeated[~kafka] = out[~kafka].duplicated([EVENT_ID]).to_numpy()
    return out[~repeated].reset_index(drop=True)


def features_at(spec: JoinSpec, signals: pd.DataFrame, queries: pd.DataFrame) -> pd.DataFrame:
    """The model's inputs as serve could read them at each query (engine replay).

    Args:
        spec: the model's join spec.
        signals: offline-store signal rows (`SIGNAL_COLUMNS`) of at least the queries'
            entities; other sources, other schema versions and repeats are ignored.
        queries: (entity_id, at, optional by_event_time) rows; `by_event_time` rows (a
            label naming no prediction) see every event stamped by `at`
            (`as_if_arrived_in_event_time`), the others what had arrived by `at`.

    Returns:
        A frame aligned with `queries` (same index): `spec.feature_columns` in the
        model's order (float64, NaN where missing; categorical columns object, None
        where missing) and `seen`: some view of the model had a vector online.
    """
    events = current_signals(spec, signals)
    by_event_time = (
        queries[BY_EVENT_TIME].to_numpy(dtype=bool)
        if BY_EVENT_TIME in queries
        else np.zeros(len(queries), dtype=bool)
    )
    asked = queries[[ENTITY, AT]]
    seen = np.zeros(len(queries), dtype=bool)
    by_view: dict[str, pd.DataFrame] = {}
    for view in spec.views:
        mine = events[events["source"].to_numpy(dtype=object) == view.source]
        plan = spec.plans[view.name]
        parts = []
        if (~by_event_time).any():
            parts.append(vectors_at(plan, mine, asked[~by_event_time]))
        if by_event_time.any():
            parts.append(vectors_at(plan, as_if_arrived_in_event_time(mine), asked[by_event_time]))
        vectors = pd.concat(parts).loc[queries.index]
        seen |= vectors[AS_OF].notna().to_numpy()
        by_view[view.name] = vectors
    columns: dict[str, np.ndarray] = {}
    for ref, column in zip(spec.model.features, spec.feature_columns, strict=True):
        view_name, _, feature = ref.partition(".")
        values = by_view[view_name][feature]
        if column in spec.categories:
            columns[column] = as_categories(values).to_numpy(dtype=object)
        else:
            columns[column] = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    out = pd.DataFrame(columns, index=queries.index)
    out[SEEN] = seen
    return out


def training_rows(
    spec: JoinSpec, queries: pd.DataFrame, features: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """Training rows of the queries some view had a vector for.

    Args:
        spec: the model's join spec.
        queries: `query_times` rows.
        features: `features_at` of those queries (same index).

    Returns:
        (`spec.columns` with `ts` = the query time `at`, the number of cold starts:
        queries whose entity had no vector in any of the model's views, dropped because
        serve answers them with the fallback and they teach the model nothing).
    """
    seen = features[SEEN].to_numpy(dtype=bool)
    hit = queries[seen]
    rows = features.loc[seen, spec.feature_columns].reset_index(drop=True)
    rows[LABEL] = hit[LABEL].to_numpy(dtype="float64")
    rows[TS] = hit[AT].to_numpy(dtype="float64")
    rows[ENTITY] = hit[ENTITY].astype(str).to_numpy(dtype=object)
    rows[OUTCOME_ID] = hit[EVENT_ID].astype(str).to_numpy(dtype=object)
    return finish_frame(rows, spec), int((~seen).sum())


def signal_rows(
    spec: JoinSpec, signals: pd.DataFrame, pending: pd.DataFrame, anchors: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """The whole signal join in one call: `query_times`, `features_at`, `training_rows`.

    Returns:
        (training rows, cold starts dropped).
    """
    queries = query_times(pending, anchors, spec.model.label_horizon_s)
    if queries.empty:
        return empty_rows(spec), 0
    return training_rows(spec, queries, features_at(spec, signals, queries))
