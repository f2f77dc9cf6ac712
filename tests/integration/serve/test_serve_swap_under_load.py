"""Promotion and rollback through the admin API while clients keep predicting: no request
fails, the new version answers within seconds, and a rollback brings the old one back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from libs.common.registry import MlflowRegistry
from tests.integration.serve.stack import DeployChampion, Deployed, wait_for

pytestmark = pytest.mark.integration
TOKEN = "integration-admin-token"  # what tests/conftest.py puts in the Ray nodes' env
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module", name="deployed")
async def _deployed(deploy_champion: DeployChampion) -> AsyncIterator[Deployed]:
    # No registry polling: the swap can only come from the admin endpoint's event.
    async with deploy_champion("swap", admin_token=TOKEN, registry_poll_s=600) as deployed:
        yield deployed


@dataclass
class Load:
    """Answers of clients predicting in a loop: (monotonic time, status, version)."""

    answers: list[tuple[float, int, str | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def versions_since(self, t: float) -> set[str | None]:
        return {v for at, _, v in self.answers if at >= t}


async def _predict_forever(deployed: Deployed, load: Load, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            r = await deployed.http.post("/v1/predict", json={"entity_id": deployed.known})
        except Exception as exc:  # a refused or dropped connection is a failed request
            load.errors.append(repr(exc))
            continue
        body = r.json() if r.status_code == 200 else {}
        version = body.get("model", {}).get("version")
        load.answers.append((time.monotonic(), r.status_code, version))
        if r.status_code != 200 or body.get("degraded"):
            load.errors.append(f"{r.status_code} {r.text[:200]}")


async def test_promote_and_rollback_under_load_fail_no_request(
    deployed: Deployed, mlflow_uri: str, train, tmp_path_factory: pytest.TempPathFactory
) -> None:  # type: ignore[no-untyped-def]
    """Eight clients predict without pause; v2 is promoted, then rolled back, over the
    admin API: every request answers 200 undegraded, and the rollback serves within 10 s."""
    model = deployed.definitions.models[0]
    registry = MlflowRegistry(mlflow_uri, str(tmp_path_factory.mktemp("swap-artifacts")))
    # Registered, not promoted: only the admin call below moves the champion alias.
    v2 = registry.register(model.name, train(model, 2), params={"seed": 2}, metrics={}, tags={})
    load, stop = Load(), asyncio.Event()
    clients = [asyncio.create_task(_predict_forever(deployed, load, stop)) for _ in range(8)]
    try:
        await asyncio.sleep(2.0)
        promoted = await deployed.http.post(
            f"/v1/admin/models/{model.name}/promote", json={"version": v2}, headers=ADMIN
        )
        assert promoted.status_code == 200, promoted.text
        await wait_for(
            lambda: v2 in load.versions_since(0), timeout_s=30, what="the new version answers"
        )
        await asyncio.sleep(2.0)
        rolled_at = time.monotonic()
        rolled = await deployed.http.post(
            f"/v1/admin/models/{model.name}/rollback", json={}, headers=ADMIN
        )
        assert rolled.status_code == 200, rolled.text
        previous = rolled.json()["version"]
        assert previous != v2

        def back_at() -> float | None:
            # The first answer from which on every answer is the previous version again.
            after = [(at, v) for at, _, v in load.answers if at >= rolled_at]
            for k, (at, _) in enumerate(after):
                if after[k:] and len(after[k:]) >= 20 and all(v == previous for _, v in after[k:]):
                    return at
            return None

        restored = await wait_for(back_at, timeout_s=30, what="the rollback answers")
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert load.errors == [], load.errors[:5]
    assert len(load.answers) > 100 and {s for _, s, _ in load.answers} == {200}
    assert restored - rolled_at < 10.0, f"rollback took {restored - rolled_at:.1f} s"
    models = (await deployed.http.get("/v1/models")).json()
    live = [m for m in models["models"] if m["name"] == model.name]
    assert [(m["version"], m["variant"]) for m in live] == [(previous, "champion")]
