"""The optional retrain schedule: due models, deterministic request ids, the loop."""

from __future__ import annotations

import pytest

from libs.common.clients.kafka import MemoryPublisher
from libs.common.definitions import ModelDefinition
from libs.common.schemas import RetrainModel
from services.retrain.core.schedule import due
from services.retrain.scheduler import RetrainScheduler

HOURLY = ModelDefinition(name="hourly", features=["v.a"], retrain_every_s=3600)
NEVER = ModelDefinition(name="never", features=["v.a"])


@pytest.mark.parametrize(
    ("now", "last_slot", "expected"),
    [
        (7200.0, {}, []),  # the first slot seen is the start: nothing due
        (7199.0, {"hourly": 1}, []),  # same slot
        (7200.0, {"hourly": 1}, [2]),  # next slot
        (36000.0, {"hourly": 1}, [10]),  # missed slots coalesce into one request
    ],
)
def test_due_models(now: float, last_slot: dict[str, int], expected: list[int]) -> None:
    """Only scheduled models are due, once per new slot."""
    found = due([HOURLY, NEVER], now, last_slot)
    assert [slot for _, slot in found] == expected
    assert all(r.model == "hourly" and r.requested_by == "schedule" for r, _ in found)


def test_the_same_slot_is_the_same_request() -> None:
    """Two retrain instances waking in one slot publish one request id (trained once)."""
    [(a, _)] = due([HOURLY], 7300.0, {"hourly": 1})
    [(b, _)] = due([HOURLY], 10_000.0, {"hourly": 1})
    [(c, _)] = due([HOURLY], 11_000.0, {"hourly": 2})
    assert a.event_id == b.event_id != c.event_id


class FailingOnce(MemoryPublisher):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def publish(self, topic: str, message: RetrainModel, *, key: str | None = None) -> None:  # type: ignore[override]
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker down")
        await super().publish(topic, message, key=key)


async def test_scheduler_publishes_each_slot_once_and_retries_a_failed_publish() -> None:
    """The loop publishes a due request to retrain.requests keyed by model; a failed
    publish is retried on the next tick, and a slot is never published twice."""
    now = [3600.0 * 5 + 10]
    publisher = FailingOnce()
    scheduler = RetrainScheduler(
        [HOURLY, NEVER], publisher, "retrain.requests", clock=lambda: now[0]
    )
    assert await scheduler.tick() == 0  # start slot
    now[0] += 3600
    assert await scheduler.tick() == 0  # the broker refused it
    assert await scheduler.tick() == 1  # retried
    assert await scheduler.tick() == 0  # already published for this slot
    [(key, _)] = publisher.sent["retrain.requests"]
    [request] = publisher.messages["retrain.requests"]
    assert key == "hourly" and isinstance(request, RetrainModel) and request.model == "hourly"
