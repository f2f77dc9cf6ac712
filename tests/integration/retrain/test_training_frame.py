"""The training frame on a real offline store and Ray: served features, window reads, fallbacks."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from libs.common.definitions import Definitions, load_definitions
from libs.common.features.engine import vectors
from libs.common.features.plan import ViewPlan
from libs.common.features.replay import final_states
from libs.common.offline import OUTCOMES, PREDICTIONS, SIGNALS, OfflineStore, signal_row
from libs.common.schemas import ModelRef, Outcome, PredictionMade, Signal
from libs.common.synthetic import SyntheticConfig, SyntheticSource
from services.retrain.adapters import training_frame
from services.retrain.adapters.training_frame import build_training_frame
from services.retrain.core.dataset import LABEL, OUTCOME_ID, TS, JoinSpec
from services.retrain.core.offline_rows import outcome_row, prediction_row

REPO = Path(__file__).resolve().parents[3]
END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TOPIC = "signals.valid"


class _Log:
    """A store filled as the services fill it, with answers logged as serve logs them."""

    def __init__(self, definitions: Definitions, root: Path, seed: int = 11) -> None:
        self.model = definitions.models[0]
        [self.view] = definitions.views_of_model(self.model)
        self.source = definitions.source(self.view.source)
        self.plan = ViewPlan.of(self.view, self.source)
        self.store = OfflineStore(root)
        self.rng = random.Random(seed)
        signals: list[Signal] = []
        synthetic = SyntheticSource(self.source, SyntheticConfig(entities=5, seed=seed))
        for kind, payload in synthetic.history(
            end=END, steps=30, step_s=113.0, model=self.model.name
        ):
            if kind == "signal":
                if len(signals) % 4 == 0 or payload["entity_id"].endswith("-0"):
                    payload["fields"].pop("pressure", None)
                # Ingest accepts each record 0.1-20 s after it happened (every tenth
                # 10 min late): Kafka order is arrival order, not event time.
                signal = Signal.model_validate(payload)
                lag = 600.0 if len(signals) % 10 == 9 else self.rng.uniform(0.1, 20.0)
                arrived = signal.event_time + timedelta(seconds=lag)
                signals.append(signal.model_copy(update={"ingested_at": arrived}))
        self.signals = sorted(signals, key=lambda s: s.ingested_at or s.event_time)
        self.rows = pd.DataFrame(
            [signal_row(s, topic=TOPIC, partition=0, offset=i) for i, s in enumerate(self.signals)]
        )
        self.predictions: list[PredictionMade] = []
        self.outcomes: list[Outcome] = []

    def served(self, entity: str, at: datetime) -> dict[str, float | str | None]:
        """The inputs serve read from the online store at `at` (None: a cold start): the
        engine's state after every event of the entity that had arrived by then."""
        rows = self.rows
        arrived = rows[(rows["entity_id"] == entity) & (rows["arrival_ts"] <= at.timestamp())]
        vector = {}
        if len(arrived):
            [(_, states)] = list(final_states(self.plan, arrived))
            vector = vectors(self.plan, states)[0] or {}
        return {ref: vector.get(ref.partition(".")[2]) for ref in self.model.features}

    def answer(self, entity: str, at: datetime, variant: str = "champion") -> PredictionMade:
        features = self.served(entity, at) if variant != "fallback" else {}
        p = PredictionMade(
            entity_id=entity,
            event_time=at,
            score=0.5,
            model=ModelRef(name=self.model.name, version="1", variant=variant),  # type: ignore[arg-type]
            features=features,
        )
        self.predictions.append(p)
        return p

    def label(self, entity: str, at: datetime, label: float, pid: str | None) -> Outcome:
        o = Outcome(
            model=self.model.name, entity_id=entity, event_time=at, label=label, prediction_id=pid
        )
        self.outcomes.append(o)
        return o

    def write(
        self, batch: int = 7, *, store: OfflineStore | None = None, log_inputs: bool = True
    ) -> None:
        """One file per `batch` records, named in produced order; signals delivered twice.

        `log_inputs=False` writes every answer as a fallback (no inputs logged), so the
        signal join answers all its labels.
        """
        store = store or self.store
        rows = self.rows.to_dict("records")
        answers = [prediction_row(p) for p in self.predictions]
        if not log_inputs:
            answers = [{**a, "variant": "fallback", "features_json": "{}"} for a in answers]
        for kind, items in (
            (SIGNALS, rows + rows[::3]),
            (PREDICTIONS, answers),
            (OUTCOMES, [outcome_row(o) for o in self.outcomes]),
        ):
            for i in range(0, len(items), batch):
                store.append(kind, items[i : i + batch], name=f"{kind}-0-{i:012d}")


def _mixed_log(root: Path) -> _Log:
    """Labels of every kind: served answers, fallbacks, unknown ids, no id, cold starts."""
    log = _Log(load_definitions(REPO / "signalops.yaml"), root)
    for i, s in enumerate(log.signals[3::7]):
        at = s.event_time + timedelta(seconds=log.rng.uniform(1.0, 300.0))
        later = at + timedelta(hours=3)  # the label arrives long after the answer
        kind = i % 5
        if kind in (0, 1):
            log.label(s.entity_id, later, float(i % 2), log.answer(s.entity_id, at).event_id)
        elif kind == 2:
            p = log.answer(s.entity_id, at, "fallback")
            log.label(s.entity_id, later, float(i % 2), p.event_id)
        elif kind == 3:
            log.label(s.entity_id, later, float(i % 2), f"not-logged-{i}")
        else:
            log.label(s.entity_id, at, float(i % 2), None)
    # A cold start: the entity's first signal comes after the answer.
    first = min(log.signals, key=lambda s: s.event_time)
    p = log.answer(first.entity_id, first.event_time - timedelta(hours=1), "fallback")
    log.label(first.entity_id, first.event_time + timedelta(hours=5), 1.0, p.event_id)
    log.write()
    return log


def test_logged_inputs_equal_the_signal_join_in_process_and_on_ray(
    tmp_path: Path, ray_cluster: str
) -> None:
    """Served answers, fallbacks, unknown ids and unnamed labels: the rows from logged
    inputs equal the engine replay's, and the Ray Data path equals the in-process one."""
    log = _mixed_log(tmp_path / "logged")
    spec = JoinSpec.of(load_definitions(REPO / "signalops.yaml"), log.model.name)
    # The same log with no inputs logged: every named answer is joined over signals.
    replayed = OfflineStore(tmp_path / "replayed")
    log.write(store=replayed, log_inputs=False)

    in_process = build_training_frame(log.store, spec)
    on_ray = build_training_frame(log.store, spec, in_process_max_bytes=0, partitions=3)
    from_signals = build_training_frame(replayed, spec)
    from_signals_on_ray = build_training_frame(replayed, spec, in_process_max_bytes=0)

    unknown = sum(1 for o in log.outcomes if (o.prediction_id or "").startswith("not-logged"))
    assert unknown > 0
    assert len(in_process) == len(log.outcomes) - unknown - 1  # and the cold start
    pd.testing.assert_frame_equal(on_ray, in_process)
    pd.testing.assert_frame_equal(from_signals, in_process)
    pd.testing.assert_frame_equal(from_signals_on_ray, in_process)
    assert list(in_process.columns) == spec.columns
    assert in_process[spec.feature_columns].isna().any().any()  # missing pressure: NaN


def test_window_reads_only_what_it_needs_and_applies_the_label_rules(
    tmp_path: Path, ray_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window of served answers reads no signal; corrections, bad labels and old answers."""
    log = _Log(load_definitions(REPO / "signalops.yaml"), tmp_path)
    spec = JoinSpec.of(load_definitions(REPO / "signalops.yaml"), log.model.name)
    since = END - timedelta(hours=1)
    entity = log.signals[-1].entity_id
    before = log.answer(entity, since - timedelta(minutes=5))
    inside = [log.answer(entity, since + timedelta(minutes=m)) for m in (1, 2, 3)]
    # The label of an answer made before the window arrives inside it: out, not joined
    # at label time.
    log.label(entity, since + timedelta(minutes=10), 1.0, before.event_id)
    # A correction in a later file, with the same event time: produced later, it wins.
    log.label(entity, since + timedelta(minutes=20), 0.0, inside[0].event_id)
    log.label(entity, since + timedelta(minutes=20), 1.0, inside[0].event_id)
    log.label(entity, since + timedelta(minutes=21), 0.7, inside[1].event_id)  # not a label
    log.label(entity, since + timedelta(minutes=22), 1.0, inside[1].event_id)
    log.label(entity, since + timedelta(minutes=23), 0.0, inside[2].event_id)
    log.write(batch=1)
    read: list[str] = []
    real_read = training_frame._read

    def spy(store, kind, *args, **kwargs):  # type: ignore[no-untyped-def]
        read.append(kind)
        return real_read(store, kind, *args, **kwargs)

    monkeypatch.setattr(training_frame, "_read", spy)

    frame = build_training_frame(log.store, spec, since=since.timestamp())
    on_ray = build_training_frame(log.store, spec, since=since.timestamp(), in_process_max_bytes=0)

    assert SIGNALS not in read
    pd.testing.assert_frame_equal(frame, on_ray)
    assert list(frame[TS]) == [p.event_time.timestamp() for p in inside]
    assert list(frame[LABEL]) == [1.0, 1.0, 0.0]
    assert list(frame[OUTCOME_ID]) == [o.event_id for o in log.outcomes[2:3] + log.outcomes[4:]]
    for p, row in zip(inside, frame.to_dict("records"), strict=True):
        logged = [p.features[ref] for ref in log.model.features]
        logged = [math.nan if v is None else v for v in logged]
        trained = [row[c] for c in spec.feature_columns]
        assert trained == pytest.approx(logged, nan_ok=True)
