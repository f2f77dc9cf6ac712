"""Ingest throughput and added latency on a real Tansu and redis-server (issue 9).

Starts a Tansu broker and a redis-server on free ports, pre-produces signals, then
runs the real service (`python -m services.ingest.main`, its own process, default
definitions) and reads what it publishes to signals.valid:

- raw: `--seconds` x 10,000 records pre-produced to signals.raw, then ingest started;
  signals/s = records over the span of their signals.valid record timestamps;
- http: wrk (`-t2`, `--connections` clients, 4 by default) posting 1,000-signal
  batches built in Lua (every record unique, so the dedup window has nothing to drop)
  for `--seconds`; signals/s arriving on signals.valid, again over their record
  timestamps;
- baseline: a bare aiokafka produce of the same records (`send` per record, with the
  producer settings of ingest's publisher: acks=all, linger 5 ms, `kafka_batch_bytes`
  batches, 1,000 per gather) from this process, in the same run; each rate above is
  reported as a ratio to it;
- ceiling: the same records sent the way ingest's publisher sends them (record batches
  built per partition, libs/common/clients/kafka/batching.py), reported for scale;
- latency: paced at `--rate` (5,000/s) for `--latency-seconds`, once through
  signals.raw (records produced one by one, timestamped at send) and once over HTTP
  (a 50-signal batch every 10 ms, open loop); added latency = the signals.valid
  record's timestamp (ingest's produce) minus when this script sent it, per record,
  p50/p99/max.

`--workers N` runs ingest with SIGNALOPS_INGEST_WORKERS=N (its CPU is summed over the
workers, 100% = one core). `--profile DIR` runs py-spy on the ingest processes during
the raw drain and the http phase and prints the top frames of the http phase by share
of samples (self and inclusive; DIR/ingest_raw.txt holds the raw drain's). The
machine's load average and ingest's CPU are printed with each run: other work on a
shared machine moves the absolute figures, so compare the ratios of one run.

    .venv/bin/python bench/ingest_throughput.py                     # ~2 min
    .venv/bin/python bench/ingest_throughput.py --seconds 10 --workers 2 --connections 8
    .venv/bin/python bench/ingest_throughput.py --seconds 10 --profile /tmp/ingest-prof
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.local_stack import tansu_and_redis
from libs.common.clients.kafka import ensure_topics
from libs.common.clients.kafka.batching import send_records
from libs.common.net import free_port
from libs.common.settings import Settings, Topics
from libs.common.testing import spawn_service, stop_service

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 4
BATCH = 1000  # signals per HTTP request, and per gather in the baseline
RAW_RATE = 10_000  # records per --seconds pre-produced for the raw phase (and the baseline)
TARGET_RATE = 20_000
TARGET_RATIO = 0.5
ENTITIES = 10_000
LATENCY_TAG = "lat-"  # event ids of the latency phase's records
OWN = ("services/", "libs/")  # py-spy's paths of the project's own modules
TOPICS = Topics()
Record = tuple[bytes, bytes]  # key, value

console = Console(width=160)


# stack -----------------------------------------------------------------------------


@dataclass
class Stack:
    bootstrap: str
    redis_url: str
    workdir: Path


@contextlib.contextmanager
def stack(workdir: Path) -> Iterator[Stack]:
    """A memory-only Tansu and a non-persistent redis-server on free loopback ports."""
    with tansu_and_redis(workdir) as (bootstrap, redis_url):
        yield Stack(bootstrap, redis_url, workdir)


@dataclass
class Ingest:
    """`python -m services.ingest.main` on a free port."""

    proc: subprocess.Popen[bytes]
    url: str

    @classmethod
    def start(cls, st: Stack, log: Path, workers: int = 1) -> Ingest:
        port = free_port()
        env = {
            **os.environ,
            "SIGNALOPS_KAFKA_BOOTSTRAP": st.bootstrap,
            "SIGNALOPS_REDIS_URL": st.redis_url,
            "SIGNALOPS_DATA_DIR": str(st.workdir / "data"),
            "SIGNALOPS_DEFINITIONS": str(REPO / "signalops.yaml"),
            "SIGNALOPS_KAFKA_PARTITIONS": str(PARTITIONS),
            "SIGNALOPS_INGEST_PORT": str(port),
            "SIGNALOPS_LOG_LEVEL": "WARNING",
            "SIGNALOPS_INGEST_WORKERS": str(workers),
            "SIGNALOPS_INGEST_WORKER_PORTS_FROM": str(free_port()),
        }
        proc = spawn_service("services.ingest.main", env, log)
        ingest = cls(proc, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ingest exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{ingest.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return ingest
            time.sleep(0.2)
        raise RuntimeError("ingest not ready in 90 s")

    def cpu_s(self) -> float:
        """CPU seconds of the ingest process and its workers (SIGNALOPS_INGEST_WORKERS)."""
        parent = psutil.Process(self.proc.pid)
        total = 0.0
        for p in [parent, *parent.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total


# records ---------------------------------------------------------------------------


def records(n: int, first: int, base: datetime, *, tag: str = "") -> list[Record]:
    """`n` valid `sensors` signals as a client sends them, each unique (its own event
    time, 1 ms apart from `base`); `tag` adds an explicit event id."""
    out: list[Record] = []
    for i in range(first, first + n):
        entity = f"device-{i % ENTITIES}"
        at = (base + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z")
        eid = f'"event_id":"{tag}{i}",' if tag else ""
        value = (
            f'{{"source":"sensors","entity_id":"{entity}","event_time":"{at}",{eid}'
            f'"schema_version":1,"fields":{{"temperature":{20 + i % 600 / 10},'
            f'"vibration":{i % 1000 / 10},"status":"ok"}}}}'
        )
        out.append((entity.encode(), value.encode()))
    return out


def producer(bootstrap: str) -> AIOKafkaProducer:
    """The settings of ingest's own publisher (libs/common/clients/kafka/publisher.py)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_batch_size=Settings().kafka_batch_bytes,
        enable_idempotence=False,
    )


async def produce(bootstrap: str, topic: str, recs: Sequence[Record]) -> float:
    """Send `recs` keyed, BATCH at a time (all acknowledged per batch); seconds taken."""
    p = producer(bootstrap)
    await p.start()
    try:
        started = time.perf_counter()
        for at in range(0, len(recs), BATCH):
            futures = [await p.send(topic, v, key=k) for k, v in recs[at : at + BATCH]]
            await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await p.stop()


# reading signals.valid ---------------------------------------------------------------


class ValidTail:
    """Reads signals.valid from the beginning in the background, keeping each record's
    timestamp (and the event id of latency-phase records). Counting by reading: Tansu's
    end offsets lag behind what a consumer receives, so they cannot count records."""

    def __init__(self, bootstrap: str, tag: bytes) -> None:
        self.stamps: list[int] = []
        self.tagged: dict[str, int] = {}  # event id -> timestamp of latency records
        self._bootstrap, self._tag = bootstrap, tag
        self._eid = re.compile(rb'"event_id":"(' + re.escape(tag) + rb'[^"]*)"')
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ValidTail:
        c = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
        )
        await c.start()
        c.assign(partitions(TOPICS.valid))
        self._task = asyncio.create_task(self._run(c))
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, c: AIOKafkaConsumer) -> None:
        try:
            while True:
                for recs in (await c.getmany(timeout_ms=200, max_records=20_000)).values():
                    for r in recs:
                        self.stamps.append(r.timestamp)
                        if self._tag in r.value and (m := self._eid.search(r.value)):
                            self.tagged[m.group(1).decode()] = r.timestamp
        finally:
            await c.stop()

    async def wait_for(self, total: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.stamps) < total:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"signals.valid holds {len(self.stamps)} records, not {total}, "
                    f"after {timeout_s:.0f} s"
                )
            await asyncio.sleep(0.1)

    def rate(self, first: int) -> tuple[int, float]:
        """(records, records/s) from record `first` on, over their timestamps' span."""
        stamps = self.stamps[first:]
        span_s = max((max(stamps) - min(stamps)) / 1000, 1e-3)
        return len(stamps), len(stamps) / span_s


def partitions(topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(PARTITIONS)]


# phases -----------------------------------------------------------------------------


@dataclass
class Result:
    phase: str
    records: int
    rate: float
    ingest_cpu: float | None = None  # share of one core during the phase
    note: str = ""


WRK_LUA = """
local n = %d
local base = %d  -- ms since the epoch of the first event time
local headers = {["Content-Type"] = "application/json"}
local counter = 0
local thread_id = 0
local ids = 0
setup = function(thread)
  ids = ids + 1
  thread:set("tid", ids)
end
init = function(args)
  thread_id = tonumber(tid)
end
request = function()
  counter = counter + 1
  local parts = {}
  for j = 1, n do
    -- unique per thread, request and record: thread in the top digits
    local i = (thread_id * 100000000) + counter * n + j
    local ms = base + (i %% 3000000)
    local sec = math.floor(ms / 1000)
    parts[j] = string.format(
      '{"source":"sensors","entity_id":"device-%%d","event_time":"%%s.%%03dZ",'
      .. '"schema_version":1,"fields":{"temperature":%%.1f,"vibration":%%.1f,"status":"ok"}}',
      i %% %d, os.date("!%%Y-%%m-%%dT%%H:%%M:%%S", sec), ms %% 1000,
      20 + (i %% 600) / 10, (i %% 1000) / 10)
  end
  return wrk.format("POST", "/v1/signals", headers, "[" .. table.concat(parts, ",") .. "]")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"status_errors":%%d,"socket_errors":%%d,'
    .. '"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(url: str, seconds: float, workdir: Path, connections: int) -> dict[str, int]:
    # Event times spread over the 50 min before now (sensors allow an hour of lateness).
    base_ms = int((datetime.now(UTC) - timedelta(minutes=55)).timestamp() * 1000)
    script = workdir / "ingest_batch.lua"
    script.write_text(WRK_LUA % (BATCH, base_ms, ENTITIES))
    command = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    command += ["--timeout", "30s"]
    command += ["-s", str(script), url]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    return dict(json.loads(line.removeprefix("WRKJSON ")))


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    spy = REPO / ".venv" / "bin" / "py-spy"
    command = [str(spy), "record", "-p", str(pid), "-d", str(max(1, int(seconds)))]
    command += ["-r", "100", "-f", "raw", "-o", str(out), "--nonblocking", "--subprocesses"]
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def top_frames(raw: Path, n: int = 15) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's collapsed stacks: the share of samples each frame was running
    (self), and the share in which each of the project's own functions (services/,
    libs/) was on the stack (inclusive): where the time goes, by stage."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        total += count
        own[_name(frames[-1])] += count
        for f in {_name(f) for f in frames if f.partition(" (")[2].startswith(OWN)}:
            incl[f] += count
    return (
        [(f, k / max(total, 1)) for f, k in own.most_common(n)],
        [(f, k / max(total, 1)) for f, k in incl.most_common(n)],
    )


def _name(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    func, _, where = frame.partition(" (")
    return f"{func} ({where.rpartition('/')[2].split(':')[0]})"


async def phase_raw(
    tail: ValidTail, ingest: Ingest, n: int, seconds: float, prof_dir: Path | None
) -> Result:
    """Ingest, just started, drains the `n` records pre-produced to signals.raw."""
    first = len(tail.stamps)
    # CPU from the first published record: joining the group takes Tansu ~5 s.
    await tail.wait_for(first + 1, timeout_s=60)
    if prof_dir is not None:  # about the drain's length at 20,000/s
        profile(ingest.proc.pid, max(1, n / 20_000), prof_dir / "ingest_raw.txt")
    cpu0 = ingest.cpu_s()
    t0 = time.monotonic()
    await tail.wait_for(first + n, timeout_s=max(60, seconds * 10))
    cpu = (ingest.cpu_s() - cpu0) / (time.monotonic() - t0)
    got, rate = tail.rate(first)
    return Result("raw → signals.valid", got, rate, cpu)


async def phase_http(
    st: Stack,
    tail: ValidTail,
    ingest: Ingest,
    seconds: float,
    prof_dir: Path | None,
    connections: int,
) -> tuple[Result, Path | None]:
    first = len(tail.stamps)
    spy, prof_out = None, None
    if prof_dir is not None:
        prof_out = prof_dir / "ingest_http.txt"
        spy = profile(ingest.proc.pid, seconds - 1, prof_out)
    cpu0, t0 = ingest.cpu_s(), time.monotonic()
    wrk = await asyncio.to_thread(run_wrk, ingest.url, seconds, st.workdir, connections)
    cpu = (ingest.cpu_s() - cpu0) / (time.monotonic() - t0)
    if spy is not None:
        spy.wait(timeout=60)
    sent = wrk["requests"] * BATCH
    await tail.wait_for(first + sent, timeout_s=120)
    got, rate = tail.rate(first)
    note = (
        f"{wrk['requests']} requests, batch p50 {wrk['p50_us'] / 1000:.0f} ms, p99 "
        f"{wrk['p99_us'] / 1000:.0f} ms, non-2xx {wrk['status_errors']}, "
        f"socket errors {wrk['socket_errors']}"
    )
    return Result("http batch → signals.valid", got, rate, cpu, note), prof_out


async def phase_baseline(st: Stack, seconds: float) -> Result:
    n = int(seconds * RAW_RATE)
    topic = f"bench.baseline.{time.time_ns()}"
    await ensure_topics(st.bootstrap, [topic], PARTITIONS)
    base = datetime.now(UTC) - timedelta(minutes=50)
    took = await produce(st.bootstrap, topic, records(n, 0, base))
    return Result("bare aiokafka produce", n, n / took)


async def phase_ceiling(st: Stack, seconds: float) -> Result:
    """The baseline's records sent as ingest's publisher sends them (batches built per
    partition): what the broker and one Python producer can take on this machine."""
    n = int(seconds * RAW_RATE)
    topic = f"bench.ceiling.{time.time_ns()}"
    await ensure_topics(st.bootstrap, [topic], PARTITIONS)
    recs = records(n, 0, datetime.now(UTC) - timedelta(minutes=50))
    p = producer(st.bootstrap)
    await p.start()
    try:
        started = time.perf_counter()
        for at in range(0, n, BATCH):
            await send_records(p, [(topic, k, v, []) for k, v in recs[at : at + BATCH]])
        took = time.perf_counter() - started
    finally:
        await p.stop()
    return Result("batched produce (ceiling)", n, n / took)


async def phase_latency(
    st: Stack, tail: ValidTail, ingest: Ingest, rate: int, seconds: float, *, via: str
) -> Result:
    """Paced input at `rate` for `seconds`, `via` "raw" (produced to signals.raw, one
    record at a time) or "http" (a 1%-of-a-second batch posted every 10 ms, open loop);
    added latency per record = its signals.valid timestamp minus when it was sent."""
    n = int(rate * seconds)
    tag = f"{LATENCY_TAG}{via}-"
    recs = records(n, 0, datetime.now(UTC) - timedelta(minutes=5), tag=tag)
    first = len(tail.stamps)
    sent_ms: dict[str, int] = {}
    tick, per_tick = 0.01, max(1, int(rate * 0.01))
    p = producer(st.bootstrap)
    await p.start()
    client = httpx.AsyncClient(base_url=ingest.url, timeout=60)
    pending: list[asyncio.Future[Any]] = []
    statuses: Counter[int] = Counter()

    async def post(body: bytes) -> int:
        response = await client.post("/v1/signals", content=body)
        statuses[response.status_code] += 1
        return len(response.json().get("accepted", []))

    try:
        t0 = time.monotonic()
        for k, at in enumerate(range(0, n, per_tick)):
            delay = t0 + k * tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now_ms = int(time.time() * 1000)
            chunk = range(at, min(n, at + per_tick))
            sent_ms.update((f"{tag}{i}", now_ms) for i in chunk)
            if via == "http":
                body = b"[" + b",".join(recs[i][1] for i in chunk) + b"]"
                pending.append(asyncio.ensure_future(post(body)))
            else:
                for i in chunk:
                    key, value = recs[i]
                    pending.append(await p.send(TOPICS.raw, value, key=key, timestamp_ms=now_ms))
        done = await asyncio.gather(*pending)
        paced = n / (time.monotonic() - t0)
    finally:
        await p.stop()
        await client.aclose()
    # Over HTTP only what was accepted is published (a 503 when the limit is reached).
    await tail.wait_for(first + (sum(done) if via == "http" else n), timeout_s=120)
    added = sorted(ts - sent_ms[eid] for eid, ts in tail.tagged.items() if eid in sent_ms)
    q = lambda f: added[min(len(added) - 1, int(f * len(added)))]  # noqa: E731
    note = f"paced {paced:,.0f}/s; added latency ms p50 {q(0.5)}, p99 {q(0.99)}, max {added[-1]}"
    if via == "http":
        note += f"; answers {dict(statuses)}"
    return Result(f"latency at {rate:,}/s ({via})", len(added), paced, note=note)


# main -------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    console.print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (1/5/15 min) at start"
    )
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp, stack(Path(tmp)) as st:
        await ensure_topics(st.bootstrap, TOPICS.all(), PARTITIONS)
        log = Path(tmp) / "ingest.log"
        prof_dir = Path(args.profile) if args.profile else None
        if prof_dir:
            prof_dir.mkdir(parents=True, exist_ok=True)
        base1 = await phase_baseline(st, args.seconds)
        ceiling = await phase_ceiling(st, args.seconds)
        # The raw backlog is produced before ingest starts, which then drains it.
        n = int(args.seconds * RAW_RATE)
        base = datetime.now(UTC) - timedelta(minutes=50)
        await produce(st.bootstrap, TOPICS.raw, records(n, 0, base))
        ingest = Ingest.start(st, log, args.workers)
        try:
            async with ValidTail(st.bootstrap, LATENCY_TAG.encode()) as tail:
                raw = await phase_raw(tail, ingest, n, args.seconds, prof_dir)
                http, prof_out = await phase_http(
                    st, tail, ingest, args.seconds, prof_dir, args.connections
                )
                base2 = await phase_baseline(st, args.seconds)
                lat_raw = await phase_latency(
                    st, tail, ingest, args.rate, args.latency_seconds, via="raw"
                )
                lat_http = await phase_latency(
                    st, tail, ingest, args.rate, args.latency_seconds, via="http"
                )
        except BaseException:
            console.print(log.read_text()[-3000:])
            raise
        finally:
            stop_service(ingest.proc, timeout_s=20)
    baseline = (base1.rate + base2.rate) / 2
    table = Table(title="ingest throughput (issue 9)")
    for col in ("phase", "records", "signals/s", "/ baseline", "ingest CPU", "notes"):
        table.add_column(col)
    for r in (base1, base2, ceiling, raw, http, lat_raw, lat_http):
        ratio = f"{r.rate / baseline:.2f}" if r in (raw, http) else ""
        cpu = f"{r.ingest_cpu:.0%}" if r.ingest_cpu is not None else ""
        table.add_row(r.phase, f"{r.records:,}", f"{r.rate:,.0f}", ratio, cpu, r.note)
    console.print(table)
    for r in (raw, http):
        verdict = r.rate >= TARGET_RATE and r.rate / baseline >= TARGET_RATIO
        console.print(
            f"{r.phase}: {r.rate:,.0f}/s, {r.rate / baseline:.2f} of the baseline "
            f"(target ≥ {TARGET_RATE:,}/s and ≥ {TARGET_RATIO}): "
            + ("[green]met[/green]" if verdict else "[red]not met[/red]")
        )
    end_load = os.getloadavg()
    console.print(f"load average at the end: {end_load[0]:.1f} / {end_load[1]:.1f}")
    if prof_out is not None and prof_out.exists():
        own, incl = top_frames(prof_out)
        for title, rows in (("self", own), ("inclusive", incl)):
            t = Table(title=f"py-spy, ingest under the http phase: {title} share")
            t.add_column("share")
            t.add_column("frame")
            for frame, share in rows:
                t.add_row(f"{share:.1%}", frame)
            console.print(t)
        console.print(f"raw profile: {prof_out}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=15, help="length of the raw and http phases")
    p.add_argument("--rate", type=int, default=5000, help="paced rate of the latency phase")
    p.add_argument("--latency-seconds", type=float, default=10)
    p.add_argument("--profile", help="directory for a py-spy profile of the http phase")
    p.add_argument(
        "--workers", type=int, default=1, help="SIGNALOPS_INGEST_WORKERS of the ingest under test"
    )
    p.add_argument("--connections", type=int, default=4, help="wrk connections of the http phase")
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
