"""The whole loop on real parts: signals in over HTTP, features in Redis, predictions
out of Ray Serve, a retrain request producing a new version that serve then uses.

Runs once with the demo's definitions and once with a different file
(examples/payments.yaml) to prove nothing in the services is demo-specific.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from infra.kafka_tools import publish_one
from libs.common.clients.redis import RedisFeatureStore, make_redis
from libs.common.definitions import Definitions, load_definitions
from libs.common.net import free_port
from libs.common.registry import MlflowRegistry
from libs.common.schemas import RetrainModel
from libs.common.settings import Settings
from libs.common.synthetic import SyntheticConfig, SyntheticSource
from services.retrain.admin import promote_version

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Bounded polling: returns the first truthy result, or fails naming what never came."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen in {timeout_s:.0f}s (last: {last!r})")


class RunningStack:
    """ingest, features and retrain as real processes; serve deployed on the session Ray."""

    def __init__(self, settings: Settings, definitions: Definitions, logs: Path) -> None:
        self.settings = settings
        self.definitions = definitions
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ingest = f"http://127.0.0.1:{settings.ingest_port}"
        self.serve = f"http://127.0.0.1:{settings.serve_port}"

    def env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "SIGNALOPS_DATA_DIR": str(s.data_dir),
                "SIGNALOPS_DEFINITIONS": str(s.definitions),
                "SIGNALOPS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
                "SIGNALOPS_REDIS_URL": s.redis_url,
                "SIGNALOPS_RAY_ADDRESS": s.ray_address,
                "SIGNALOPS_MLFLOW_TRACKING_URI": s.tracking_uri,
                "SIGNALOPS_KAFKA_PARTITIONS": str(s.kafka_partitions),
                "SIGNALOPS_INGEST_PORT": str(s.ingest_port),
                "SIGNALOPS_FEATURES_METRICS_PORT": str(s.features_metrics_port),
                "SIGNALOPS_RETRAIN_METRICS_PORT": str(s.retrain_metrics_port),
                "SIGNALOPS_SERVE_PORT": str(s.serve_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        for name, topic in s.topics.model_dump().items():
            env[f"SIGNALOPS_TOPICS__{name.upper()}"] = topic
        return env

    def start(self) -> None:
        for name in ("ingest", "features", "retrain"):
            with open(self.logs / f"{name}.log", "wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", f"services.{name}.main"],
                        env=self.env(),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        cwd=REPO,
                    )
                )
        from ray import serve

        from services.serve.main import build_app
        from services.serve.settings import ServeSettings

        settings = ServeSettings(**{**self.settings.model_dump(), "serve_num_replicas": 1})
        serve.start(http_options={"host": "127.0.0.1", "port": self.settings.serve_port})
        serve.run(build_app(settings), name="signalops", route_prefix="/")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()

    def assert_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                name = p.args[2]  # type: ignore[index]
                log = (self.logs / f"{name.split('.')[1]}.log").read_text()[-3000:]
                raise AssertionError(f"{name} exited with {p.returncode}:\n{log}")

    def served_version(self, entity_id: str, model: str) -> dict[str, Any] | None:
        self.assert_alive()
        resp = httpx.post(
            f"{self.serve}/v1/predict", json={"entity_id": entity_id, "model": model}, timeout=10
        )
        return resp.json() if resp.status_code == 200 else None


def _running_stack(
    definitions_path: Path, tmp_path: Path, make_settings: Any, **parts: Any
) -> Iterator[RunningStack]:
    """A RunningStack on the session's broker, Redis and Ray, with its own MLflow store,
    data directory and ports; stopped afterwards."""
    settings: Settings = make_settings(
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        ingest_port=free_port(),
        features_metrics_port=free_port(),
        retrain_metrics_port=free_port(),
        definitions=definitions_path,
        data_dir=tmp_path / "data",
        **parts,
    )
    stack = RunningStack(settings, load_definitions(definitions_path), tmp_path)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(name="stack", params=["signalops.yaml", "examples/payments.yaml"])
def _stack(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    redis_url: str,
    ray_cluster: str,
    serve_port: int,
    make_settings: Any,
    tmp_path: Path,
) -> Iterator[RunningStack]:
    yield from _running_stack(
        REPO / request.param,
        tmp_path,
        make_settings,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        ray_address=ray_cluster,
        serve_port=serve_port,
    )


def test_signals_to_prediction_to_retrained_model(stack: RunningStack) -> None:
    """A fresh stack serves the bootstrap model, then a retrained version after a request."""
    defs = stack.definitions
    model = defs.models[0]
    source = defs.source(defs.views_of_model(model)[0].source)
    synthetic = SyntheticSource(source, SyntheticConfig(entities=40, seed=11), entity_prefix="e2e")
    entity = synthetic.entities[0].entity_id

    # 1. Ingest becomes ready; the bootstrap model (version 1) is served, as fallback
    #    for an entity without features (cold start).
    wait_for(lambda: httpx.get(f"{stack.ingest}/readyz").status_code == 200, 60, "ingest ready")
    cold = wait_for(
        lambda: (
            (a := stack.served_version(entity, model.name)) and a["model"]["version"] == "1" and a
        ),
        180,
        "bootstrap model served",
    )
    assert cold["model"]["variant"] == "fallback"
    assert cold["degraded"] is True and "no_features" in cold["reasons"]

    # 2. A labelled history arrives over HTTP (signals and outcomes), one bad record too.
    signals, outcomes = [], []
    end = datetime.now(UTC) - timedelta(seconds=5)
    for kind, payload in synthetic.history(end=end, steps=25, step_s=60, model=model.name):
        (signals if kind == "signal" else outcomes).append(payload)
    bad = {"source": source.name, "entity_id": entity, "event_time": "not a time", "fields": {}}
    for i in range(0, len(signals), 400):
        resp = httpx.post(f"{stack.ingest}/v1/signals", json=signals[i : i + 400], timeout=30)
        assert resp.status_code == 202, resp.text
    resp = httpx.post(f"{stack.ingest}/v1/signals", json=[signals[0], bad], timeout=30)
    assert resp.status_code == 207
    assert resp.json()["rejected"][0]["index"] == 1
    for i in range(0, len(outcomes), 400):
        resp = httpx.post(f"{stack.ingest}/v1/outcomes", json=outcomes[i : i + 400], timeout=30)
        assert resp.status_code == 202, resp.text

    # 3. Features reach Redis; serve answers from the champion with fresh features.
    views = [(v.name, v.version) for v in defs.views_of_model(model)]

    async def vector_present() -> bool:
        store = RedisFeatureStore(make_redis(stack.settings.redis_url))
        try:
            (found,) = await store.read_vectors(views, [entity])
            return len(found) == len(views)
        finally:
            await store.close()

    wait_for(lambda: asyncio.run(vector_present()), 60, "features in Redis")
    warm = wait_for(
        lambda: (
            (a := stack.served_version(entity, model.name))
            and a["model"]["variant"] == "champion"
            and a
        ),
        30,
        "champion answer",
    )
    assert warm["model"]["version"] == "1" and warm["degraded"] is False
    assert 0.0 <= warm["score"] <= 1.0

    # 4. A retrain request (what `signalops retrain` publishes) yields version 2. Trained
    #    on this test's few real labels only (the bootstrap history leaves once a model
    #    has min_rows real labels), the gates may refuse it against the bootstrap
    #    champion; then the operator promotes it (`signalops models promote`). Either
    #    way serve answers with it.
    request = RetrainModel(model=model.name, reason="e2e", requested_by="test")
    asyncio.run(
        publish_one(
            stack.settings.kafka_bootstrap, stack.settings.topics.retrain, request, key=model.name
        )
    )
    registry = MlflowRegistry(stack.settings.tracking_uri, stack.settings.artifact_root)
    [v2] = wait_for(
        lambda: [v for v in registry.list_versions(model.name) if v.version == "2"],
        240,
        "version 2 registered",
    )
    # The gates' verdict is on the version from registration on (the alias moves after).
    if v2.tags["promotion"].startswith("not promoted"):
        asyncio.run(promote_version(stack.settings, model.name, "2"))
    new = wait_for(
        lambda: (
            (a := stack.served_version(entity, model.name)) and a["model"]["version"] == "2" and a
        ),
        240,
        "retrained version served",
    )
    assert new["model"]["variant"] == "champion"
    models = httpx.get(f"{stack.serve}/v1/models", timeout=10).json()
    served = {(m["name"], m["variant"]): m["version"] for m in models["models"]}
    assert served[(model.name, "champion")] == "2"


@pytest.fixture(name="drift_stack")
def _drift_stack(
    kafka_bootstrap: str,
    redis_url: str,
    ray_cluster: str,
    serve_port: int,
    make_settings: Any,
    tmp_path: Path,
) -> Iterator[RunningStack]:
    # The demo's definitions with feature-drift alarms out of reach: this test's traffic
    # (a report every 2 s) is unlike the bootstrap history (every 30 s), so its window
    # features rightly drift and would retrain on all history; the scenario here is the
    # concept drift alone (features unchanged), caught through performance.
    data = yaml.safe_load((REPO / "signalops.yaml").read_text())
    for m in data["models"]:
        m["drift"] = {**m.get("drift", {}), "psi": 1000.0}
    definitions_path = tmp_path / "definitions.yaml"
    definitions_path.write_text(yaml.safe_dump(data))
    yield from _running_stack(
        definitions_path,
        tmp_path,
        make_settings,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        ray_address=ray_cluster,
        serve_port=serve_port,
    )


def test_concept_drift_is_detected_retrained_and_served(drift_stack: RunningStack) -> None:
    """No manual retrain: after the labelling flips (features unchanged), the monitor
    raises a performance drift, the trainer retrains on the rows since the change
    point, and the new champion answers the flipped truth.

    Entities report every round and are scored over HTTP; each answer's label (its own
    decision before the drift, the opposite after) is posted naming the prediction.
    """
    stack = drift_stack
    defs = stack.definitions
    model = defs.models[0]
    source = defs.source(defs.views_of_model(model)[0].source)
    # Seed 7 is the bootstrap's: the same ground-truth weights, so version 1 is right.
    synthetic = SyntheticSource(source, SyntheticConfig(entities=60, seed=7), entity_prefix="dr")
    entities = [e.entity_id for e in synthetic.entities]
    wait_for(lambda: httpx.get(f"{stack.ingest}/readyz").status_code == 200, 60, "ingest ready")
    wait_for(lambda: stack.served_version(entities[0], model.name), 180, "bootstrap model served")

    # Per round, each entity's report and its true label (the Bayes decision of the
    # synthetic truth for the state the report shows).
    rounds: dict[int, list[dict[str, Any]]] = {}
    truth: dict[int, dict[str, float]] = {}
    end = datetime.now(UTC) - timedelta(seconds=5)
    step = 0
    for kind, payload in synthetic.history(end=end, steps=80, step_s=2.0, model=model.name):
        if kind == "signal":
            r = step // len(entities)
            rounds.setdefault(r, []).append(payload)
            p_true = synthetic.probability(payload["entity_id"])
            truth.setdefault(r, {})[payload["entity_id"]] = float(p_true >= 0.5)
            step += 1

    def play(r: int, flipped: bool) -> list[tuple[dict[str, Any], float]]:
        # Stamped now: event time is arrival time here, so the point-in-time join sees
        # exactly what serve saw (late events are the features issue's to handle).
        now = datetime.now(UTC).isoformat()
        reports = [{**p, "event_time": now} for p in rounds[r % 80]]
        resp = httpx.post(f"{stack.ingest}/v1/signals", json=reports, timeout=30)
        assert resp.status_code == 202, resp.text
        time.sleep(1.0)  # let the features service apply the round
        body = {"requests": [{"entity_id": e, "model": model.name} for e in entities]}
        answers = httpx.post(f"{stack.serve}/v1/predict/batch", json=body, timeout=30).json()
        scored = [a for a in answers["predictions"] if a["model"]["variant"] == "champion"]
        outcomes, out = [], []
        for a in scored:
            label = float(truth[r % 80][a["entity_id"]] != flipped)
            out.append((a, label))
            outcomes.append(
                {
                    "model": model.name,
                    "entity_id": a["entity_id"],
                    "label": label,
                    "prediction_id": a["prediction_id"],
                    "event_time": datetime.now(UTC).isoformat(),
                }
            )
        if outcomes:
            resp = httpx.post(f"{stack.ingest}/v1/outcomes", json=outcomes, timeout=30)
            assert resp.status_code == 202, resp.text
        return out

    # Before the drift: features arrive, the champion answers, labels agree with it.
    wait_for(lambda: play(0, False), 60, "champion answers with features")
    labelled: list[tuple[dict[str, Any], float]] = []
    for r in range(1, 40):
        labelled += play(r, False)
        if len(labelled) >= 800:
            break
    assert len(labelled) >= 800
    accuracy_before = sum((a["score"] >= 0.5) == (y == 1.0) for a, y in labelled[-300:]) / 300
    assert accuracy_before >= 0.7, accuracy_before
    before = stack.served_version(entities[0], model.name)
    assert before is not None
    first_version = before["model"]["version"]

    # The drift: the truth flips. Keep playing until a new champion serves.
    def recovered() -> str | None:
        answers = play(recovered.round, True)  # type: ignore[attr-defined]
        recovered.round += 1  # type: ignore[attr-defined]
        versions = {a["model"]["version"] for a, _ in answers}
        new = versions - {first_version}
        return new.pop() if new else None

    recovered.round = 40  # type: ignore[attr-defined]
    new_version = wait_for(recovered, 300, "a new champion after the concept drift")
    assert int(new_version) > int(first_version)
    # Then the refit on the labels since the change point (drift.refit_labels).
    first_version = new_version
    new_version = wait_for(recovered, 300, "the refit after the concept drift")

    # The new champion answers the flipped truth.
    answers = [x for r in range(recovered.round, recovered.round + 5) for x in play(r, True)]  # type: ignore[attr-defined]
    right = sum((a["score"] >= 0.5) == (label == 1.0) for a, label in answers)
    after = right / len(answers)
    print(f"concept drift e2e: accuracy before {accuracy_before:.3f}, after refit {after:.3f}")
    assert after >= accuracy_before - 0.1, f"accuracy {after:.2f}, before {accuracy_before:.2f}"

    # It was the monitor: a performance drift event with its change point, and the
    # version's training window starts there.
    from libs.common.clients.kafka.reader import read_to_end
    from libs.common.schemas import DriftDetected

    events = [
        DriftDetected.from_bytes(d.value)
        for d in asyncio.run(
            read_to_end(stack.settings.kafka_bootstrap, stack.settings.topics.drift)
        )
    ]
    performance = [e for e in events if e.kind == "performance"]
    assert [e.statistic for e in performance] == ["mann_whitney_log_loss"]
    assert performance[0].change_point is not None
    # The refit was the monitor's request on the window since the same change point.
    asks = [
        RetrainModel.from_bytes(d.value)
        for d in asyncio.run(
            read_to_end(stack.settings.kafka_bootstrap, stack.settings.topics.retrain)
        )
    ]
    assert [(a.requested_by, a.since) for a in asks] == [
        ("drift-monitor", performance[0].change_point)
    ]
    registry = MlflowRegistry(stack.settings.tracking_uri, stack.settings.artifact_root)
    [info] = [v for v in registry.list_versions(model.name) if v.version == new_version]
    assert "window_since" in info.tags and "drift" in info.tags["reason"]
