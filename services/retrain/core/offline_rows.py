"""Messages -> offline-store rows (libs.common.offline schemas), and batch file names."""

from __future__ import annotations

import json
import re

from libs.common import offline
from libs.common.schemas import Outcome, PredictionMade, Signal


def outcome_row(outcome: Outcome) -> dict[str, object]:
    return {
        "event_id": outcome.event_id,
        "model": outcome.model,
        "entity_id": outcome.entity_id,
        "ts": outcome.event_time.timestamp(),
        "label": float(outcome.label),
        "prediction_id": outcome.prediction_id,
    }


def prediction_row(prediction: PredictionMade) -> dict[str, object]:
    """A logged prediction; its `event_id` is the prediction id outcomes may name."""
    return {
        "event_id": prediction.event_id,
        "model": prediction.model.name,
        "version": prediction.model.version,
        "variant": prediction.model.variant,
        "entity_id": prediction.entity_id,
        "ts": prediction.event_time.timestamp(),
        "score": prediction.score,
        "features_json": json.dumps(prediction.features, sort_keys=True),
    }


# The SIGNALS columns of rows written before lineage (arrival time, Kafka position).
_BEFORE_LINEAGE = ("event_id", "source", "schema_version", "entity_id", "ts", "fields_json")


def signal_row(signal: Signal) -> dict[str, object]:
    """A signal as the features service stores it, without the lineage columns (read as
    null: a row from before lineage), for synthetic histories; the row itself is
    libs.common.offline's `signal_row`, so the two cannot drift apart.
    """
    row = offline.signal_row(signal, topic="", partition=-1, offset=-1)
    return {k: row[k] for k in _BEFORE_LINEAGE}


def batch_file_name(topic: str, partition: int, first_offset: int) -> str:
    """The offline file of one consumed batch: a replayed batch rewrites the same file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", topic)
    return f"{safe}-{partition}-{first_offset:012d}"
