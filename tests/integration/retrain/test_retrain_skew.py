"""The no-skew proof: a training row holds exactly the features serve saw for those events."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import numpy as np

from libs.common.clients.redis import RedisFeatureStore, StoredVector, make_redis, state_key
from libs.common.definitions import load_definitions
from libs.common.features import model_columns, to_row
from libs.common.features.codec import decode, encode
from libs.common.features.engine import EventColumns, apply, field_columns, vectors
from libs.common.features.plan import ViewPlan
from libs.common.offline import OUTCOMES, PREDICTIONS, SIGNALS, OfflineStore, signal_row
from libs.common.schemas import ModelRef, Outcome, PredictionMade, Signal
from libs.common.synthetic import SyntheticConfig, SyntheticSource
from services.retrain.adapters.training_frame import build_training_frame
from services.retrain.core.dataset import ENTITY, OUTCOME_ID, TS, JoinSpec
from services.retrain.core.offline_rows import outcome_row, prediction_row

END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


async def test_training_rows_equal_the_online_vectors(retrain_settings, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    """Ray Data join rows equal the vectors the engine wrote to Redis event by event,
    read back at each row's query time."""
    settings = retrain_settings()
    definitions = load_definitions(settings.definitions)
    model = definitions.model(definitions.models[0].name)
    [view] = definitions.views_of_model(model)
    source = definitions.source(view.source)
    plan = ViewPlan.of(view, source)
    rng = random.Random(5)

    # Events: synthetic signals at irregular times, every third (and all of device-0)
    # without the optional `pressure` field, accepted by ingest 0.1-30 s later (every
    # seventh 15 min later); outcomes between events, some naming a logged prediction.
    signals: list[Signal] = []
    synthetic = SyntheticSource(source, SyntheticConfig(entities=4, seed=5))
    for kind, payload in synthetic.history(end=END, steps=40, step_s=97.0, model=model.name):
        if kind == "signal":
            if len(signals) % 3 == 0 or payload["entity_id"].endswith("-0"):
                payload["fields"].pop("pressure", None)
            signal = Signal.model_validate(payload)
            lag = 900.0 if len(signals) % 7 == 6 else rng.uniform(0.1, 30.0)
            arrived = signal.event_time + timedelta(seconds=lag)
            signals.append(signal.model_copy(update={"ingested_at": arrived}))
    signals.sort(key=lambda s: s.ingested_at or s.event_time)  # Kafka order
    outcomes: list[Outcome] = []
    predictions: list[PredictionMade] = []
    for i, s in enumerate(signals[::4]):
        at = s.event_time + timedelta(seconds=rng.uniform(1.0, 600.0))
        prediction_id = None
        if i % 3 == 0:
            # Logged without inputs (as a fallback answer is): the signal join answers it.
            prediction = PredictionMade(
                entity_id=s.entity_id,
                event_time=at,
                score=0.5,
                model=ModelRef(name=model.name, version="1", variant="fallback"),
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

    # Training path: the offline store (half the signals delivered twice: at-least-once)
    # and the Ray Data join.
    store = OfflineStore(settings.offline_dir)
    rows = [
        signal_row(s, topic="signals.valid", partition=0, offset=i) for i, s in enumerate(signals)
    ]
    store.append(SIGNALS, rows, name="signals.valid-0-0")
    store.append(SIGNALS, rows[: len(rows) // 2], name="signals.valid-0-0-replay")
    store.append(OUTCOMES, [outcome_row(o) for o in outcomes], name="outcomes-0-0")
    store.append(PREDICTIONS, [prediction_row(p) for p in predictions], name="predictions-0-0")
    frame = build_training_frame(
        store, JoinSpec.of(definitions, model.name), in_process_max_bytes=0
    )
    assert len(frame) == len(outcomes)

    # Streaming path: as the features service does, per event in Kafka order: load the
    # entity's state from the real Redis (its own database, emptied first: entity ids
    # repeat), apply the event, save state and vector in one transaction. Each row's
    # vector is read back once every event that had arrived by its query time is applied.
    client = make_redis(redis_url.rsplit("/", 1)[0] + "/7")
    await client.flushdb()
    online = RedisFeatureStore(client)
    fields = [s.fields for s in signals]
    numeric, text, bad = field_columns(plan.field_types, fields)
    assert not bad
    pending = list(range(len(signals)))
    columns = model_columns(model)
    anchored_between_events = 0
    answered = {o.event_id for o in outcomes if o.prediction_id}
    compared = 0
    for row in frame.sort_values(TS).to_dict("records"):
        while pending and rows[pending[0]]["arrival_ts"] <= row[TS]:
            i = pending.pop(0)
            s = signals[i]
            key = state_key(view.name, view.version, plan.fingerprint, s.entity_id)
            states = decode(plan, await online.load_states([key]))
            event = EventColumns(
                entity=np.zeros(1, dtype=np.int64),
                ts=np.array([s.event_time.timestamp()]),
                seq=np.array([float(i)]),
                partition=np.zeros(1, dtype=np.int64),
                offset=np.array([i], dtype=np.int64),
                numeric={k: v[[i]] for k, v in numeric.items()},
                text={k: v[[i]] for k, v in text.items()},
            )
            apply(plan, states, event)
            [values] = vectors(plan, states)
            vector = StoredVector(values or {}, float(states.newest[0]), 0.0)
            await online.save(
                [(key, encode(plan, states)[0])], [(view.name, view.version, s.entity_id, vector)]
            )
        if str(row[OUTCOME_ID]) not in answered:
            continue  # a label naming no prediction joins by event time (no answer to match)
        compared += 1
        [held] = await online.read_vectors([(view.name, view.version)], [row[ENTITY]])
        served = to_row(model, {view.name: held[view.name].values})
        trained = [row[c] for c in columns]
        np.testing.assert_array_equal(trained, served, err_msg=str(row[OUTCOME_ID]))
        anchored_between_events += held[view.name].as_of < row[TS]
    # The query times fall between events, so the rows really test the anchoring.
    assert compared > 0
    assert anchored_between_events == compared
    assert frame[columns].isna().any().any()  # missing pressure travels as NaN...
    assert (frame[columns].dtypes == "float64").all()  # ...in float columns, never None
    assert json.dumps(held[view.name].values)  # the online vector is plain JSON
    await online.close()
