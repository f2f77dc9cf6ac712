"""The no-skew proof: a training row holds exactly the features serve saw for those events."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np

from libs.common.clients.redis import RedisFeatureStore, StoredEvent, StoredVector, make_redis
from libs.common.definitions import load_definitions
from libs.common.features import EventHistory, compute_view, model_columns, to_row
from libs.common.offline import OUTCOMES, PREDICTIONS, SIGNALS, OfflineStore
from libs.common.schemas import ModelRef, Outcome, PredictionMade, Signal
from libs.common.synthetic import SyntheticConfig, SyntheticSource
from services.retrain.adapters.ray_data import build_training_frame
from services.retrain.core.dataset import ENTITY, OUTCOME_ID, TS, JoinSpec, source_retention
from services.retrain.core.offline_rows import outcome_row, prediction_row, signal_row

END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


async def test_training_rows_equal_the_online_vectors(retrain_settings, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    """Ray Data join rows equal compute_view fed event by event, read at the join time."""
    settings = retrain_settings()
    definitions = load_definitions(settings.definitions)
    model = definitions.models[0]
    [view] = definitions.views_of_model(model)
    source = definitions.source(view.source)
    rng = random.Random(5)

    # Events: synthetic signals at irregular times, every third (and all of device-0)
    # without the optional `pressure` field; outcomes between events, some naming a
    # logged prediction.
    signals: list[Signal] = []
    synthetic = SyntheticSource(source, SyntheticConfig(entities=4, seed=5))
    for kind, payload in synthetic.history(end=END, steps=40, step_s=97.0, model=model.name):
        if kind == "signal":
            if len(signals) % 3 == 0 or payload["entity_id"].endswith("-0"):
                payload["fields"].pop("pressure", None)
            signals.append(Signal.model_validate(payload))
    outcomes: list[Outcome] = []
    predictions: list[PredictionMade] = []
    for i, s in enumerate(signals[::4]):
        at = s.event_time + timedelta(seconds=rng.uniform(1.0, 600.0))
        prediction_id = None
        if i % 3 == 0:
            prediction = PredictionMade(
                entity_id=s.entity_id,
                event_time=at,
                score=0.5,
                model=ModelRef(name=model.name, version="1", variant="champion"),
            )
            predictions.append(prediction)
            prediction_id = prediction.event_id
            at += timedelta(hours=2)  # the label arrives long after the prediction
        outcomes.append(
            Outcome(
                model=model.name,
                entity_id=s.entity_id,
                event_time=at,
                label=float(i % 2),
                prediction_id=prediction_id,
            )
        )

    # Training path: the offline store (signals written twice: at-least-once) and Ray Data.
    store = OfflineStore(settings.offline_dir)
    rows = [signal_row(s) for s in signals]
    store.append(SIGNALS, rows, name="signals.valid-0-0")
    store.append(SIGNALS, rows[: len(rows) // 2], name="signals.valid-0-0-replay")
    store.append(OUTCOMES, [outcome_row(o) for o in outcomes], name="outcomes-0-0")
    store.append(PREDICTIONS, [prediction_row(p) for p in predictions], name="predictions-0-0")
    frame = build_training_frame(store, JoinSpec.of(definitions, model.name))
    assert len(frame) == len(outcomes)

    # Streaming path: the online store fed one event at a time, in event-time order, each
    # vector computed as of the newest event; read back at each row's join time.
    # The real Redis adapter (its own database, emptied first: entity ids repeat).
    client = make_redis(redis_url.rsplit("/", 1)[0] + "/7")
    await client.flushdb()
    online = RedisFeatureStore(client)
    retention = source_retention(definitions, source.name)
    pending = sorted(signals, key=lambda s: s.event_time)
    columns = model_columns(model)
    anchored_between_events = 0
    for row in frame.sort_values(TS).itertuples(index=False):
        row_d = row._asdict()
        while pending and pending[0].event_time.timestamp() <= row_d[TS]:
            s = pending.pop(0)
            stored = await online.add_events(
                source.name,
                source.version,
                s.entity_id,
                [StoredEvent(s.event_id, s.event_time.timestamp(), s.fields)],
                retention_s=retention,
            )
            history = EventHistory.from_events([(e.event_id, e.ts, e.fields) for e in stored])
            as_of = history.times[-1]
            await online.write_vectors(
                [
                    (
                        view.name,
                        view.version,
                        s.entity_id,
                        StoredVector(compute_view(view, history, as_of), as_of, 0.0),
                    )
                ]
            )
        [held] = await online.read_vectors([(view.name, view.version)], [row_d[ENTITY]])
        served = to_row(model, {view.name: held[view.name].values})
        trained = [row_d[c] for c in columns]
        np.testing.assert_array_equal(trained, served, err_msg=row_d[OUTCOME_ID])
        anchored_between_events += held[view.name].as_of < row_d[TS]
    # The join times fall between events, so the rows really test the anchoring.
    assert anchored_between_events == len(frame)
    assert frame[columns].isna().any().any()  # missing pressure travels as NaN...
    assert (frame[columns].dtypes == "float64").all()  # ...in float columns, never None
    await online.close()
