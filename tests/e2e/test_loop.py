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

from infra.kafka_tools import publish_one
from libs.common.clients.redis import RedisFeatureStore, make_redis
from libs.common.definitions import Definitions, load_definitions
from libs.common.net import free_port
from libs.common.schemas import RetrainModel
from libs.common.settings import Settings
from libs.common.synthetic import SyntheticConfig, SyntheticSource

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


@pytest.fixture(name="stack", params=["signalops.yaml", "examples/payments.yaml"])
def _stack(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    redis_url: str,
    ray_cluster: str,
    mlflow_uri: str,
    serve_port: int,
    make_settings: Any,
    tmp_path: Path,
) -> Iterator[RunningStack]:
    definitions_path = REPO / request.param
    settings: Settings = make_settings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        ray_address=ray_cluster,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        serve_port=serve_port,
        ingest_port=free_port(),
        features_metrics_port=free_port(),
        retrain_metrics_port=free_port(),
        definitions=definitions_path,
        data_dir=tmp_path / "data",
    )
    stack = RunningStack(settings, load_definitions(definitions_path), tmp_path)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


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

    # 4. A retrain request (what `signalops retrain` publishes) yields version 2, served.
    request = RetrainModel(model=model.name, reason="e2e", requested_by="test")
    asyncio.run(
        publish_one(
            stack.settings.kafka_bootstrap, stack.settings.topics.retrain, request, key=model.name
        )
    )
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
