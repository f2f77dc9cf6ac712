"""SpoolingPublisher with a fake broker: when records go straight through, when they are
spooled, and that the drainer publishes them in order once the broker answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from libs.common.clients.kafka import MemoryPublisher, RawOutgoing
from libs.common.clients.kafka.base import Outgoing
from libs.common.errors import DependencyUnavailable
from libs.common.schemas import Signal
from services.ingest.core.spool_format import SpooledRecord, encode_v0
from services.ingest.spool import FileSpool
from services.ingest.spooling import SpoolingPublisher


@dataclass
class FlakyBroker(MemoryPublisher):
    """A MemoryPublisher that is down (DependencyUnavailable), holds every publish until
    `gate` opens (a frozen broker), or fails with `error`."""

    down: bool = False
    error: Exception | None = None
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    async def _admit(self) -> None:
        """Fail as the broker would (error, open circuit), or wait at the gate."""
        if self.error is not None:
            raise self.error
        if self.down:
            raise DependencyUnavailable("kafka", "circuit open")
        await self.gate.wait()

    async def publish_many(self, items: Sequence[Outgoing]) -> None:
        await self._admit()
        await super().publish_many(items)

    async def publish_raw_many(self, records: Sequence[RawOutgoing]) -> None:
        await self._admit()
        await super().publish_raw_many(records)


def signals(first: int, count: int) -> list[Outgoing]:
    return [
        (
            "signals.valid",
            Signal(source="sensors", entity_id=f"d-{n % 2}", fields={"n": n}, event_id=f"e{n}"),
            f"d-{n % 2}",
        )
        for n in range(first, first + count)
    ]


def published(broker: MemoryPublisher) -> list[str]:
    """Event ids on signals.valid, sent directly or drained from the spool, in order."""
    return [Signal.from_bytes(value).event_id for _, value in broker.sent["signals.valid"]]


async def eventually(check: Callable[[], bool], timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


@pytest.fixture(name="make_spooler")
def _make_spooler(tmp_path: Path) -> Callable[[FlakyBroker], SpoolingPublisher]:
    def make(broker: FlakyBroker) -> SpoolingPublisher:
        spool = FileSpool(tmp_path / "spool", max_bytes=1 << 20, segment_bytes=4096)
        return SpoolingPublisher(broker, spool, publish_timeout_s=0.2, max_backoff_s=0.05)

    return make


async def test_records_go_straight_to_an_answering_broker(
    make_spooler: Callable[[FlakyBroker], SpoolingPublisher],
) -> None:
    """Broker up, spool empty: published directly, nothing spooled, no status shown."""
    broker = FlakyBroker()
    spooler = make_spooler(broker)
    async with spooler.running():
        await spooler.publish_many(signals(0, 3))
        assert published(broker) == ["e0", "e1", "e2"]
        assert spooler.spool.pending_records == 0
        assert spooler.status() == {}


async def test_an_outage_spools_and_later_records_queue_behind_until_drained(
    make_spooler: Callable[[FlakyBroker], SpoolingPublisher],
) -> None:
    """Broker down: the batch is spooled; once it answers, a new batch still goes behind
    the spooled one, and the drainer publishes both in their order."""
    broker = FlakyBroker(down=True)
    spooler = make_spooler(broker)
    async with spooler.running():
        await spooler.publish_many(signals(0, 3))
        assert spooler.status()["spooling"] == {
            "records": 3,
            "bytes": spooler.spool.pending_bytes,
            "oldest_age_s": pytest.approx(0, abs=5),
            "max_bytes": 1 << 20,
        }
        # The broker answers again while the spool still holds records: a new batch must
        # not overtake them. The drainer may already be at work, so hold it off.
        broker.gate.clear()
        broker.down = False
        await spooler.publish_many(signals(3, 2))
        assert published(broker) == []
        broker.gate.set()
        await eventually(lambda: spooler.spool.idle)
    assert published(broker) == ["e0", "e1", "e2", "e3", "e4"]


async def test_a_publish_that_hangs_past_the_timeout_is_spooled_and_sent_once(
    make_spooler: Callable[[FlakyBroker], SpoolingPublisher],
) -> None:
    """No acknowledgement within publish_timeout_s counts as an outage: the batch is
    spooled. When the held publish lands after all, the drainer skips those records
    instead of publishing them a second time."""
    broker = FlakyBroker()
    spooler = make_spooler(broker)
    async with spooler.running():
        broker.gate.clear()
        await spooler.publish_many(signals(0, 2))
        assert spooler.spool.pending_records == 2
        await spooler.publish_many(signals(2, 1))  # behind them
        broker.gate.set()  # the frozen broker answers: the held publish lands
        await eventually(lambda: spooler.spool.idle)
    assert published(broker) == ["e0", "e1", "e2"]


async def test_a_non_transient_error_propagates_and_spools_nothing(
    make_spooler: Callable[[FlakyBroker], SpoolingPublisher],
) -> None:
    """A refusal that is not an outage (a bug, a record too large) is not hidden."""
    broker = FlakyBroker(error=ValueError("record too large"))
    spooler = make_spooler(broker)
    await spooler.spool.open()
    with pytest.raises(ValueError, match="too large"):
        await spooler.publish_many(signals(0, 2))
    assert spooler.spool.pending_records == 0
    await spooler.spool.close()


async def test_a_restarted_spooler_drains_what_the_previous_one_left(
    make_spooler: Callable[[FlakyBroker], SpoolingPublisher],
) -> None:
    """Records spooled before a stop are published by the next process, first."""
    down = FlakyBroker(down=True)
    first = make_spooler(down)
    async with first.running():
        await first.publish_many(signals(0, 4))
    assert published(down) == []

    up = FlakyBroker()
    second = make_spooler(up)
    async with second.running():
        await second.publish_many(signals(4, 1))  # behind the recovered records
        await eventually(lambda: second.spool.idle)
    assert published(up) == ["e0", "e1", "e2", "e3", "e4"]


async def test_a_drained_record_is_published_as_spooled_with_the_requests_trace(
    make_spooler: Callable[[FlakyBroker], SpoolingPublisher],
) -> None:
    """A record spooled inside a request's trace is drained with that trace's
    traceparent, its schema headers, its key and the exact bytes a direct publish sends."""
    broker = FlakyBroker(down=True)
    spooler = make_spooler(broker)
    request = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    items = signals(0, 2)
    async with spooler.running():
        with trace.use_span(NonRecordingSpan(request)):
            await spooler.publish_many(items)
        broker.down = False
        await eventually(lambda: spooler.spool.idle)
    assert broker.sent["signals.valid"] == [(k, m.to_bytes()) for _, m, k in items]
    for headers in broker.raw_headers["signals.valid"]:
        assert dict(headers) == {
            "message-type": b"Signal",
            "message-version": b"1",
            "traceparent": f"00-{0xABC:032x}-{0xDEF:016x}-01".encode(),
        }


async def test_a_spool_of_the_previous_format_is_drained_after_an_upgrade(
    make_spooler: Callable[[FlakyBroker], SpoolingPublisher], tmp_path: Path
) -> None:
    """A segment written by the previous release (unversioned frames, no headers) is
    recovered and published in order before records spooled after the upgrade, with its
    schema name as a header (it kept no trace context)."""
    old = signals(0, 3)
    segment = tmp_path / "spool" / f"{0:012d}.seg"
    segment.parent.mkdir()
    segment.write_bytes(
        b"".join(encode_v0(SpooledRecord(t, k, "Signal", m.to_bytes(), 1000.0)) for t, m, k in old)
    )
    broker = FlakyBroker(down=True)
    spooler = make_spooler(broker)
    async with spooler.running():
        assert spooler.spool.pending_records == 3
        await spooler.publish_many(signals(3, 1))  # behind them, in the new format
        broker.down = False
        await eventually(lambda: spooler.spool.idle)
    assert published(broker) == ["e0", "e1", "e2", "e3"]
    assert broker.sent["signals.valid"][:3] == [(k, m.to_bytes()) for _, m, k in old]
    assert broker.raw_headers["signals.valid"][0] == [("message-type", b"Signal")]
