"""How fast ingest's outage spool drains to a real broker.

Starts a memory-only Tansu on a free port, fills a FileSpool with `--records` signals
as ingest spools them during an outage, then runs the real SpoolingPublisher (one
drainer, default drain batch, ingest's producer settings) in front of a KafkaPublisher
and times it until the spool is empty, that is until the broker acknowledged every
record. Prints records/s over that span.

Runs unchanged on the tree of an earlier commit (for a before/after comparison):

    .venv/bin/python bench/spool_drain.py --records 200000
    mkdir /tmp/spool-head && git archive 5a176a7 | tar -x -C /tmp/spool-head
    cp bench/spool_drain.py /tmp/spool-head/bench/ && cd /tmp/spool-head
    /work/main/.venv/bin/python bench/spool_drain.py --records 200000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.binaries import tansu_command
from libs.common.clients.kafka import KafkaPublisher, ensure_topics
from libs.common.net import free_port, wait_for_port
from libs.common.schemas import Signal, utcnow
from services.ingest import spooling
from services.ingest.core.spool_format import SpooledRecord
from services.ingest.spool import FileSpool

TOPIC = "signals.valid"
PARTITIONS = 4
ENTITIES = 1000


def signals(n: int) -> list[tuple[str, Signal, str]]:
    base = utcnow() - timedelta(hours=1)
    return [
        (
            TOPIC,
            Signal(
                source="sensors",
                entity_id=f"device-{i % ENTITIES}",
                event_time=base + timedelta(milliseconds=i),
                fields={"temperature": 20.5, "vibration": 1.0, "pressure": 1.0, "status": "ok"},
            ),
            f"device-{i % ENTITIES}",
        )
        for i in range(n)
    ]


def as_spooled(items: list[tuple[str, Signal, str]]) -> list[SpooledRecord]:
    now = time.time()
    to_records = getattr(spooling, "spooled", None)  # absent before the raw drain
    if to_records is not None:
        records: list[SpooledRecord] = to_records(items, now)
        return records
    return [SpooledRecord(t, k, type(m).__name__, m.to_bytes(), now) for t, m, k in items]


def file_spool(directory: Path) -> FileSpool:
    return FileSpool(directory, max_bytes=1 << 31, segment_bytes=16 * 1024 * 1024)


async def drain(bootstrap: str, directory: Path, n: int) -> tuple[float, float]:
    """Fill a spool with `n` records and drain it; (records/s, recovery seconds)."""
    await ensure_topics(bootstrap, [TOPIC], PARTITIONS)
    spool = file_spool(directory)
    await spool.open()
    items = signals(n)
    for i in range(0, n, 1000):  # as ingest appends: one fsynced append per request
        await spool.append(as_spooled(items[i : i + 1000]))
    await spool.close()
    # Recovery (scanning every frame at open) runs before the drainer; timed apart.
    started = time.monotonic()
    await file_spool(directory).open()
    recovery = time.monotonic() - started
    publisher = KafkaPublisher(bootstrap, client_id="ingest")
    await publisher.start()
    try:
        drainer = spooling.SpoolingPublisher(
            publisher, file_spool(directory), publish_timeout_s=2.0
        )
        started = time.monotonic()
        async with drainer.running():
            # Polled: the spool has no "emptied" event (10 ms is far below the drain).
            while not drainer.spool.idle:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started - recovery
    finally:
        await publisher.stop()
    return n / elapsed, recovery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp) / "tansu.log", "wb") as out:
            tansu = subprocess.Popen(tansu_command(port), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port)
            for run in range(args.runs):
                rate, recovery = asyncio.run(
                    drain(f"127.0.0.1:{port}", Path(tmp) / f"spool-{run}", args.records)
                )
                load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
                print(
                    f"run {run + 1}: {args.records} records drained at {rate:,.0f}/s "
                    f"(recovery {recovery:.2f} s, load {load})"
                )
        finally:
            tansu.send_signal(signal.SIGTERM)
            tansu.wait(timeout=20)


if __name__ == "__main__":
    main()
