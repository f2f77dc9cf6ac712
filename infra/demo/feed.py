"""The HTTP traffic: reports to ingest, answers from serve, labels back to ingest."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from infra.demo.accuracy import Judged
from infra.demo.population import Population
from infra.demo.state import DemoState
from libs.common.synthetic import SyntheticRecord, SyntheticSource

PREDICT_AFTER_S = 1.5  # a report is scored this long after it was sent


@dataclass
class Pending:
    """A report sent and waiting to be scored, with the label its answer gets."""

    entity_id: str
    label: float
    sent_wall: float
    tries: int = 0


def _current(answer: dict[str, Any], since_wall: float, now: float) -> bool:
    """True when the answer's features were written after `since_wall`."""
    freshness = answer.get("feature_freshness_s")
    return freshness is not None and now - freshness >= since_wall


def post_signals(
    http: httpx.Client, ingest: str, body: list[dict[str, Any]], state: DemoState
) -> None:
    """Post one batch of signals to ingest, counting what it accepted and rejected."""
    if not body:
        return
    try:
        resp = http.post(f"{ingest}/v1/signals", json=body)
        doc = resp.json()
    except (httpx.HTTPError, ValueError):
        state.errors["ingest"] += 1
        return
    state.accepted += len(doc.get("accepted", []))
    for rej in doc.get("rejected", []):
        state.rejected[rej["reason"]] += 1


def send_tick(
    http: httpx.Client,
    ingest: str,
    population: Population,
    sources: list[SyntheticSource],
    labeller: SyntheticSource,
    state: DemoState,
    pending: deque[Pending],
    elapsed: float,
) -> None:
    """Send the reports due now (none during the outage) and queue the labeller's."""
    due = population.due(time.time())
    for entity in due.born:
        for src in sources:
            src.add_entity(entity)
    outage = sources[0].in_outage(elapsed)
    if outage != state.outage:
        state.outage = outage
        state.note("sources' outage begins (nothing sent)" if outage else "sources' outage ends")
    if not outage:
        now = datetime.now(UTC)
        sent_wall = time.time()
        for src in sources:
            records: list[SyntheticRecord] = []
            for entity in due.reports:
                records += src.report(entity, now)
            for r in records:
                state.sent[r.kind] += 1
            if src is labeller:
                pending.extend(Pending(e, src.decision(e), sent_wall) for e in due.reports)
            # Malformed bodies go alone (they are not JSON); the rest as one batch.
            for raw in (r.payload for r in records if isinstance(r.payload, str)):
                _post_malformed(http, ingest, raw, state)
            post_signals(
                http, ingest, [r.payload for r in records if isinstance(r.payload, dict)], state
            )
    for entity in due.retired:
        for src in sources:
            src.remove_entity(entity)


def _post_malformed(http: httpx.Client, ingest: str, raw: str, state: DemoState) -> None:
    try:
        resp = http.post(
            f"{ingest}/v1/signals", content=raw, headers={"content-type": "application/json"}
        )
        reason = (
            resp.json().get("rejected", [{}])[0].get("reason", "invalid_json")
            if resp.headers.get("content-type", "").startswith("application/json")
            else "invalid_json"
        )
    except (httpx.HTTPError, ValueError, IndexError):
        reason = "invalid_json"
    state.rejected[reason] += 1


def predict(
    http: httpx.Client, serve: str, model: str, entities: list[str], state: DemoState
) -> list[dict[str, Any]] | None:
    """Serve's batch answers for `entities`, in request order; None on an error."""
    body = {"requests": [{"entity_id": e, "model": model} for e in entities]}
    try:
        resp = http.post(f"{serve}/v1/predict/batch", json=body)
    except httpx.HTTPError:
        state.errors["serve"] += 1
        return None
    if resp.status_code != 200:
        state.errors[f"serve {resp.status_code}"] += 1
        return None
    answers: list[dict[str, Any]] = resp.json()["predictions"]
    return answers


def predict_tick(
    http: httpx.Client,
    serve: str,
    ingest: str,
    model: str,
    state: DemoState,
    pending: deque[Pending],
) -> None:
    """Score the reports sent at least PREDICT_AFTER_S ago; label each current answer."""
    cutoff = time.time() - PREDICT_AFTER_S
    batch: list[Pending] = []
    while pending and pending[0].sent_wall <= cutoff and len(batch) < 500:
        batch.append(pending.popleft())
    if not batch:
        return
    answers = predict(http, serve, model, [p.entity_id for p in batch], state)
    if answers is None:
        pending.extendleft(reversed(batch))  # tried again next tick
        return
    now_wall = time.time()
    outcomes: list[dict[str, Any]] = []
    judged: list[Judged] = []
    for p, a in zip(batch, answers, strict=True):
        state.predictions += 1
        if a["entity_id"] != p.entity_id:  # answers come in request order
            state.errors["serve order"] += 1
            continue
        # An answer from features older than the report would be judged by a label it
        # never saw: ask again (a few times) once the features have caught up.
        if not _current(a, p.sent_wall - 1.0, now_wall) and p.tries < 3:
            state.stale += 1
            pending.append(Pending(p.entity_id, p.label, p.sent_wall, p.tries + 1))
            continue
        state.latencies.append(a["latency_ms"])
        state.degraded += bool(a["degraded"])
        if a.get("feature_freshness_s") is not None:
            state.freshness.append(a["feature_freshness_s"])
        m = a["model"]
        outcomes.append(
            {
                "model": model,
                "entity_id": p.entity_id,
                "event_time": datetime.now(UTC).isoformat(),
                "label": p.label,
                "prediction_id": a["prediction_id"],
            }
        )
        judged.append(
            Judged(
                state.elapsed(), m["version"], m["variant"], (a["score"] >= 0.5) == (p.label == 1.0)
            )
        )
    if not outcomes:
        return
    try:
        resp = http.post(f"{ingest}/v1/outcomes", json=outcomes)
        accepted = len(resp.json().get("accepted", []))
    except (httpx.HTTPError, ValueError):
        state.errors["outcomes"] += 1
        return
    state.outcomes += accepted
    for j in judged:
        if j.variant == "champion" and f"v{j.version}" != state.serving:
            if state.serving != "-":
                state.note(f"version {j.version} now answers as champion")
            state.serving = f"v{j.version}"
        state.rolling.add(j)
        state.judged.append(j)
