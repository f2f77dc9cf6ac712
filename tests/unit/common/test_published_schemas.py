"""The JSON schemas published in docs/schemas match the messages the services read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from libs.common.schemas import DriftDetected, Message, RetrainModel

DOCS = Path(__file__).resolve().parents[3] / "docs" / "schemas"


@pytest.mark.parametrize(
    ("name", "message"),
    [("retrain-request", RetrainModel), ("drift-event", DriftDetected)],
)
def test_published_schema_is_the_message_schema(name: str, message: type[Message]) -> None:
    """A tool built from the published schema produces what the trainer accepts
    (regenerate with `signalops retrain --schema` after changing the message)."""
    published = json.loads((DOCS / f"{name}.schema.json").read_text())
    assert published == message.model_json_schema()


def test_a_request_built_from_the_schema_alone_is_accepted() -> None:
    """The schema's required fields are enough: any tool can publish a request."""
    published = json.loads((DOCS / "retrain-request.schema.json").read_text())
    assert published["required"] == ["model"]
    request = RetrainModel.model_validate_json(
        json.dumps({"model": "default", "reason": "weekly", "since": "2026-12-01T00:00:00Z"})
    )
    assert request.model == "default" and request.since is not None
