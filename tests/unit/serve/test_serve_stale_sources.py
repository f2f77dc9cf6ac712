"""Serve reports a polled source that is down: `stale_source:<name>` in the answer's reasons."""

from __future__ import annotations

from typing import Any

import pytest

from libs.common.definitions import Definitions, parse_definitions

FULL = {"temp_last": 70.0, "vib_last": 1.5}
POLL = {
    "url": "http://127.0.0.1:9/readings",
    "mapping": {"entity_id": "id", "fields": {"temp": "t", "vib": "v"}},
}


@pytest.fixture(name="definitions")
def _polled_definitions(definitions: Definitions) -> Definitions:
    """The unit definitions with `sensors` polled over HTTP."""
    data = definitions.model_dump(mode="json", exclude_none=True)
    data["sources"][0]["poll"] = POLL
    return parse_definitions(data)


async def test_stale_polled_source_is_named_in_reasons(make_harness: Any) -> None:
    """While features marks a polled source stale, answers built on its inputs are scored
    but degraded, with `stale_source:<name>`; an unmarked source adds no reason."""
    h = await make_harness()
    await h.put("dev-1", "stats", FULL)
    await h.put("dev-1", "hourly", {"temp_max": 80.0})
    await h.store.mark_sources({"sensors": 1_700_000_000.0}, [])

    body = (await h.client.post("/v1/predict", json={"entity_id": "dev-1"})).json()
    assert body["model"]["variant"] == "champion" and 0 <= body["score"] <= 1
    assert (body["degraded"], body["reasons"]) == (True, ["stale_source:sensors"])


async def test_fresh_polled_source_adds_no_reason(make_harness: Any) -> None:
    """A polled source that answers (not marked stale) leaves the answer undegraded."""
    h = await make_harness()
    await h.put("dev-2", "stats", FULL)
    await h.put("dev-2", "hourly", {"temp_max": 80.0})
    body = (await h.client.post("/v1/predict", json={"entity_id": "dev-2"})).json()
    assert (body["degraded"], body["reasons"]) == (False, [])
