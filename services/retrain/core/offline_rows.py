"""Messages -> offline-store rows (libs.common.offline schemas), and batch file names."""

from __future__ import annotations

import json
import re

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


def signal_row(signal: Signal) -> dict[str, object]:
    """A signal as the features service stores it (used for synthetic bootstrap history)."""
    return {
        "event_id": signal.event_id,
        "source": signal.source,
        "schema_version": signal.schema_version,
        "entity_id": signal.entity_id,
        "ts": signal.event_time.timestamp(),
        "fields_json": json.dumps(signal.fields, sort_keys=True),
    }


def batch_file_name(topic: str, partition: int, first_offset: int) -> str:
    """The offline file of one consumed batch: a replayed batch rewrites the same file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", topic)
    return f"{safe}-{partition}-{first_offset:012d}"
