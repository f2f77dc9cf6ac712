"""Features service throughput and freshness on a real Tansu and redis-server (issue 7).

Starts a Tansu broker and a redis-server on free ports (as tests/conftest.py does),
pre-produces signals to a signals.valid topic with a fast producer (pre-serialized
`Signal.to_bytes()`, aiokafka batches, partition = entity), then runs the real service
(`python -m services.features.main`, its own process and core, default definitions,
offline store on) and polls its consumer group's committed offsets:

- a: a backlog of `--seconds` x 20,000 signals over `--entities` fresh entities,
  drained; signals/s overall and over the slowest 10 s window (`--paced-a`: produce
  at 20,000/s while the service runs and report the lag instead);
- b: `--hot` entities pre-loaded with `--history` events each, then a backlog of the
  same size on them and on as many fresh entities (same run, same event layout):
  ratio of the two drain rates;
- c: paced at 5,000 signals/s for `--fresh-seconds` with `ingested_at` = send time;
  freshness from the service's signalops_features_freshness_seconds histogram and
  from Redis (each entity's vector `updated_at` minus the `ingested_at` of its
  newest signal).

    .venv/bin/python bench/features_throughput.py                       # full, ~10 min
    .venv/bin/python bench/features_throughput.py --seconds 5 --entities 5000 \
        --fresh-seconds 10                                              # quick, < 2 min
    .venv/bin/python bench/features_throughput.py --only a --profile /tmp/features
    .venv/bin/python bench/features_throughput.py --only a --seconds 60 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.local_stack import tansu_and_redis
from libs.common.clients.kafka import ensure_topics
from libs.common.clients.redis.base import vector_key
from libs.common.definitions import load_definitions
from libs.common.net import free_port
from libs.common.schemas import Signal
from libs.common.testing import spawn_service, stop_service

REPO = Path(__file__).resolve().parents[1]
RATE = 20_000  # signals/s, issue 7
FRESH_RATE = 5_000  # signals/s of the freshness phase
FRESH_P99_S = 0.25
HISTORY_RATIO = 0.8
PARTITIONS = 4
T0 = datetime(2027, 1, 15, 1, tzinfo=UTC)  # event times: one UTC date
SENTINEL = "2000-01-01T00:00:00.123456Z"  # ingested_at, stamped at send time in phase c
STATUSES = ("ok", "ok", "ok", "ok", "warn", "error")

Record = tuple[int, bytes, bytes]  # partition, key, value


@dataclass
class Stack:
    bootstrap: str
    redis_url: str
    data_dir: Path


@contextlib.contextmanager
def stack(workdir: Path) -> Iterator[Stack]:
    """A memory-only Tansu and a non-persistent redis-server on free loopback ports."""
    with tansu_and_redis(workdir) as (bootstrap, redis_url):
        yield Stack(bootstrap, redis_url, workdir / "data")


# signals ---------------------------------------------------------------------------


def signal_bytes(entity: str, seq: int, event_time: datetime, ingested_at: datetime) -> bytes:
    """One valid `sensors` signal as ingest publishes it (content-like 32-hex event id)."""
    return Signal(
        source="sensors",
        entity_id=entity,
        event_time=event_time,
        fields={
            "temperature": 20.0 + (seq * 7919 % 600) / 10,
            "vibration": (seq * 104729 % 1000) / 10,
            "pressure": 100.0 + seq % 50,
            "status": STATUSES[seq % len(STATUSES)],
        },
        event_id=f"{hash((entity, seq)) & (2**128 - 1):032x}",
        ingested_at=ingested_at,
    ).to_bytes()


def records(
    entities: Sequence[str],
    n: int,
    *,
    first_event: int = 0,
    step_s: float = 1.0,
    ingested_at: datetime | None = None,
) -> list[Record]:
    """`n` signals round-robin over `entities`, each entity's k-th at T0 + k * step_s
    (k counted from `first_event`). Partition = entity index mod PARTITIONS, like a
    key partitioner: every entity stays in one partition, in order."""
    stamp = ingested_at or datetime.now(UTC)
    out: list[Record] = []
    e = len(entities)
    for i in range(n):
        k, j = divmod(i, e)
        seq = first_event + k
        entity = entities[j]
        value = signal_bytes(entity, seq, T0 + timedelta(seconds=seq * step_s), stamp)
        out.append((j % PARTITIONS, entity.encode(), value))
    return out


async def produce(bootstrap: str, topic: str, recs: Sequence[Record]) -> float:
    """Send `recs` in big per-partition batches, acks=1; returns seconds taken."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, max_batch_size=512 * 1024, linger_ms=20
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending: list[asyncio.Future[object]] = []
        by_part: dict[int, list[Record]] = {}
        for r in recs:
            by_part.setdefault(r[0], []).append(r)
        for part, mine in by_part.items():
            batch = producer.create_batch()
            for _, key, value in mine:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=part))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
                if len(pending) > 64:
                    await asyncio.gather(*pending)
                    pending.clear()
            pending.append(await producer.send_batch(batch, topic, partition=part))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


# the service -----------------------------------------------------------------------


@dataclass
class Service:
    """`python -m services.features.main` reading `topic` as consumer group `group`."""

    proc: subprocess.Popen[bytes]
    group: str
    topic: str
    metrics_port: int

    @classmethod
    def start(
        cls, st: Stack, topic: str, group: str, log: Path, *, workers: int = 1, batch: int = 2000
    ) -> Service:
        port = free_port()
        env = {
            **os.environ,
            "SIGNALOPS_KAFKA_BOOTSTRAP": st.bootstrap,
            "SIGNALOPS_REDIS_URL": st.redis_url,
            "SIGNALOPS_DATA_DIR": str(st.data_dir),
            "SIGNALOPS_DEFINITIONS": str(REPO / "signalops.yaml"),
            "SIGNALOPS_KAFKA_PARTITIONS": str(PARTITIONS),
            "SIGNALOPS_TOPICS__VALID": topic,
            "SIGNALOPS_TOPICS__DLQ": f"{topic}.dlq",
            "SIGNALOPS_CONSUMER_GROUP": group,
            "SIGNALOPS_FEATURES_METRICS_PORT": str(port),
            "SIGNALOPS_LOG_LEVEL": "WARNING",
            "SIGNALOPS_FEATURES_WORKERS": str(workers),
            "SIGNALOPS_BATCH_RECORDS": str(batch),
        }
        proc = spawn_service("services.features.main", env, log)
        return cls(proc, group, topic, port)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def stop(self) -> None:
        stop_service(self.proc, timeout_s=20)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the service process and its children so far."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return math.nan
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total


class Offsets:
    """Committed offsets of a consumer group, summed over a topic's partitions."""

    def __init__(self, bootstrap: str) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)

    async def __aenter__(self) -> Offsets:
        await self._admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()

    async def committed(self, group: str, topic: str) -> int:
        # Partitions named: Tansu drops the connection on an all-topics OffsetFetch.
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        found = await self._admin.list_consumer_group_offsets(group, partitions=parts)
        return sum(max(0, om.offset) for tp, om in found.items() if tp.topic == topic)


@dataclass
class Drain:
    signals: int
    seconds: float  # first commit seen -> all committed
    rate: float  # signals/s over that span (first batch excluded)
    slowest_10s: float  # lowest rate over any 10 s window
    samples: list[tuple[float, int]]
    # CPU seconds the service processes (all workers) used over the same span: signals
    # per CPU second holds up when other work shares the machine, a rate does not.
    cpu_s: float = math.nan


async def drain(
    offsets: Offsets,
    service: Service,
    start: int,
    total: int,
    *,
    profile: tuple[Path, float] | None = None,
    timeout_s: float = 1800.0,
) -> Drain:
    """Poll the group's commits from `start` until `total`; the clock starts at the
    first commit past `start` (so the service's import and group join are not in it)."""
    samples: list[tuple[float, int]] = []
    cpu: list[float] = []
    deadline = time.monotonic() + timeout_s
    spy: subprocess.Popen[bytes] | None = None
    try:
        while True:
            if service.proc.poll() is not None:
                raise RuntimeError(f"service exited with {service.proc.returncode}")
            done = await offsets.committed(service.group, service.topic)
            now = time.perf_counter()
            if done > start:
                samples.append((now, done))
                cpu.append(service.cpu_seconds())
                if profile is not None and spy is None:
                    spy = _py_spy(service.proc.pid, *profile)
            if done >= total:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done - start:,} of {total - start:,} committed")
            await asyncio.sleep(0.1)
    finally:
        if spy is not None:
            spy.wait()
    (t0, c0), (t1, c1) = samples[0], samples[-1]
    rate = (c1 - c0) / (t1 - t0) if t1 > t0 else math.inf
    return Drain(total - start, t1 - t0, rate, _slowest(samples, 10.0), samples, cpu[-1] - cpu[0])


def _slowest(samples: list[tuple[float, int]], window_s: float) -> float:
    """The lowest rate over any `window_s` span of samples (math.nan if shorter)."""
    worst, j = math.inf, 0
    for t, c in samples:
        while samples[j][0] < t - window_s:
            j += 1
        if j > 0:
            tj, cj = samples[j - 1]
            worst = min(worst, (c - cj) / (t - tj))
    return worst if worst != math.inf else math.nan


def _quarters(samples: list[tuple[float, int]]) -> list[int]:
    """Signals/s in each quarter of the drain (does the rate hold up?)."""
    t0, t1 = samples[0][0], samples[-1][0]
    out = []
    for q in range(4):
        lo = [s for s in samples if s[0] >= t0 + (t1 - t0) * q / 4]
        hi = [s for s in samples if s[0] <= t0 + (t1 - t0) * (q + 1) / 4]
        (ta, ca), (tb, cb) = lo[0], hi[-1]
        out.append(round((cb - ca) / (tb - ta)) if tb > ta else 0)
    return out


def _py_spy(pid: int, path: Path, seconds: float) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).parent / "py-spy"
    cmd = [str(spy), "record", "--pid", str(pid), "-d", str(int(seconds)), "--nonblocking"]
    return subprocess.Popen(
        [*cmd, "-f", "raw", "-o", f"{path}.txt"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_started(offsets: Offsets, service: Service, st: Stack, topic: str) -> int:
    """Send one warm-up signal and wait until the service committed it (joined, hot)."""
    warm = records(["warmup-0"], 1, first_event=10_000_000)
    await produce(st.bootstrap, topic, warm)
    base = await offsets.committed(service.group, topic)
    end = base + 1
    for _ in range(1200):
        if service.proc.poll() is not None:
            raise RuntimeError(f"service exited with {service.proc.returncode}")
        if await offsets.committed(service.group, topic) >= end:
            return end
        await asyncio.sleep(0.1)
    raise TimeoutError("the service did not consume the warm-up signal in 120 s")


async def bare_consume(bootstrap: str, topic: str, n: int, max_records: int) -> float:
    """Signals/s of a plain aiokafka consumer reading the same `n` records from the start
    (no group, no decoding, nothing written): the floor of any consumer of the topic on
    this machine at this moment, to read the service's rate against.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", max_poll_records=max_records
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen, started = 0, time.perf_counter()
        while seen < n:
            batches = await consumer.getmany(timeout_ms=1000)
            seen += sum(len(recs) for recs in batches.values())
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


# scenarios --------------------------------------------------------------------------


async def scenario_a(st: Stack, args: argparse.Namespace, logs: Path) -> dict[str, object]:
    n = args.seconds * RATE
    entities = [f"device-{i}" for i in range(args.entities)]
    topic, group = "bench.a.valid", "bench-a"
    await ensure_topics(st.bootstrap, [topic, f"{topic}.dlq"], PARTITIONS)
    profile = (args.profile, args.profile_seconds) if args.profile else None
    built = time.perf_counter()
    recs = records(entities, n)
    build_s = time.perf_counter() - built
    if args.paced_a:
        async with Offsets(st.bootstrap) as offsets:
            service = Service.start(
                st, topic, group, logs / "a.log", workers=args.workers, batch=args.batch_records
            )
            try:
                start = await wait_started(offsets, service, st, topic)
                spy = _py_spy(service.proc.pid, *profile) if profile else None
                paced = await pace(st, offsets, service, recs, RATE, start, stamp=False)
                if spy is not None:
                    spy.wait()
            finally:
                service.stop()
        return {
            "signals": n,
            "entities": args.entities,
            "mode": "paced",
            "workers": args.workers,
            **paced,
        }
    produce_s = await produce(st.bootstrap, topic, recs)
    del recs
    async with Offsets(st.bootstrap) as offsets:
        service = Service.start(
            st, topic, group, logs / "a.log", workers=args.workers, batch=args.batch_records
        )
        try:
            d = await drain(offsets, service, 0, n, profile=profile)
        finally:
            service.stop()
    bare = await bare_consume(st.bootstrap, topic, n, args.batch_records)
    return {
        "signals": n,
        "entities": args.entities,
        "mode": "backlog",
        "build_s": round(build_s, 1),
        "produce_s": round(produce_s, 1),
        "produce_rate": round(n / produce_s),
        "drain_s": round(d.seconds, 1),
        "rate": round(d.rate),
        "slowest_10s_rate": None if math.isnan(d.slowest_10s) else round(d.slowest_10s),
        "rate_by_quarter": _quarters(d.samples),
        "max_lag": n,
        "workers": args.workers,
        "service_cpu_s": round(d.cpu_s, 1),
        "signals_per_cpu_s": round(n / d.cpu_s) if d.cpu_s > 0 else None,
        "bare_consume_rate": round(bare),
        "ratio_to_bare_consume": round(d.rate / bare, 3),
    }


async def scenario_b(st: Stack, args: argparse.Namespace, logs: Path) -> dict[str, object]:
    n = args.b_signals or args.seconds * RATE
    hot = [f"hot-{i}" for i in range(args.hot)]
    fresh = [f"cold-{i}" for i in range(args.hot)]
    out: dict[str, object] = {"signals": n, "entities": args.hot, "history": args.history}
    async with Offsets(st.bootstrap) as offsets:
        # 1. history: `history` events per hot entity, applied and committed.
        topic, group = "bench.b.valid", "bench-b"
        await ensure_topics(st.bootstrap, [topic, f"{topic}.dlq"], PARTITIONS)
        history = records(hot, args.hot * args.history)
        await produce(st.bootstrap, topic, history)
        service = Service.start(st, topic, group, logs / "b.log")
        try:
            await drain(offsets, service, 0, len(history))
        finally:
            service.stop()
        # 2. the backlog on the hot entities (events after their history), drained by a
        # restarted service from the committed offset.
        recs = records(hot, n, first_event=args.history)
        await produce(st.bootstrap, topic, recs)
        del recs
        service = Service.start(st, topic, group, logs / "b.log")
        try:
            with_history = await drain(offsets, service, len(history), len(history) + n)
        finally:
            service.stop()
        # 3. the same backlog (same event times) on as many fresh entities.
        topic, group = "bench.b.fresh.valid", "bench-b-fresh"
        await ensure_topics(st.bootstrap, [topic, f"{topic}.dlq"], PARTITIONS)
        recs = records(fresh, n, first_event=args.history)
        await produce(st.bootstrap, topic, recs)
        del recs
        service = Service.start(st, topic, group, logs / "b.log")
        try:
            no_history = await drain(offsets, service, 0, n)
        finally:
            service.stop()
    out.update(
        history_rate=round(with_history.rate),
        fresh_rate=round(no_history.rate),
        ratio=round(with_history.rate / no_history.rate, 3),
    )
    return out


async def pace(
    st: Stack,
    offsets: Offsets,
    service: Service,
    recs: Sequence[Record],
    rate: float,
    start: int,
    *,
    stamp: bool,
) -> dict[str, object]:
    """Send `recs` at `rate` in 10 ms ticks (ingested_at = send time when `stamp`),
    sampling lag = sent - committed twice a second; wait until all are committed.

    Returns sent rate, max and final lag, and the newest ingested_at per entity key.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=st.bootstrap, acks=1, max_batch_size=512 * 1024, linger_ms=0
    )
    await producer.start()
    sent, lags, newest = 0, [], {}
    sentinel = SENTINEL.encode()
    started = time.perf_counter()
    next_sample = started
    try:
        while sent < len(recs):
            now = time.perf_counter()
            due = min(len(recs), int((now - started) * rate) + 1)
            if due > sent:
                stamp_s = time.time()
                iso = datetime.fromtimestamp(stamp_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                batches: dict[int, object] = {}
                futures = []
                for part, key, value in recs[sent:due]:
                    if stamp:
                        value = value.replace(sentinel, iso.encode())
                        newest[key] = stamp_s
                    batch = batches.get(part) or producer.create_batch()
                    batches[part] = batch
                    batch.append(key=key, value=value, timestamp=None)  # type: ignore[attr-defined,union-attr]
                for part, batch in batches.items():
                    futures.append(await producer.send_batch(batch, service.topic, partition=part))  # type: ignore[arg-type]
                sent = due
            if now >= next_sample:
                done = await offsets.committed(service.group, service.topic)
                lags.append(start + sent - done)
                next_sample = now + 0.5
            await asyncio.sleep(0.01)
        send_s = time.perf_counter() - started
        await producer.flush()
        while (done := await offsets.committed(service.group, service.topic)) < start + sent:
            lags.append(start + sent - done)
            await asyncio.sleep(0.1)
        catch_up_s = time.perf_counter() - started - send_s
    finally:
        await producer.stop()
    tail = lags[len(lags) // 2 :]
    return {
        "sent_rate": round(sent / send_s),
        "seconds": round(send_s, 1),
        "max_lag": max(lags, default=0),
        "median_lag_2nd_half": sorted(tail)[len(tail) // 2] if tail else 0,
        "catch_up_s": round(catch_up_s, 2),
        "newest": newest,
    }


async def scenario_c(st: Stack, args: argparse.Namespace, logs: Path) -> dict[str, object]:
    n = int(args.fresh_seconds * FRESH_RATE)
    entities = [f"fresh-{i}" for i in range(args.entities)]
    topic, group = "bench.c.valid", "bench-c"
    await ensure_topics(st.bootstrap, [topic, f"{topic}.dlq"], PARTITIONS)
    placeholder = datetime.strptime(SENTINEL, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    recs = records(entities, n, ingested_at=placeholder)
    assert SENTINEL.encode() in recs[0][2], "ingested_at is not serialized as expected"
    async with Offsets(st.bootstrap) as offsets:
        service = Service.start(st, topic, group, logs / "c.log")
        try:
            start = await wait_started(offsets, service, st, topic)
            before = _freshness(service.metrics())
            paced = await pace(st, offsets, service, recs, FRESH_RATE, start, stamp=True)
            after = _freshness(service.metrics())
        finally:
            service.stop()
    buckets = [(le, after[le] - before.get(le, 0.0)) for le in sorted(after)]
    newest: dict[bytes, float] = paced.pop("newest")  # type: ignore[assignment]
    ages = await _redis_ages(st.redis_url, newest)
    return {
        "signals": n,
        "entities": args.entities,
        **paced,
        "hist_p50_s": _bucket_quantile(buckets, 0.50),
        "hist_p99_s": _bucket_quantile(buckets, 0.99),
        "hist_share_le_250ms": round(_share_le(buckets, FRESH_P99_S), 4),
        "redis_p50_s": _quantile(ages, 0.50),
        "redis_p99_s": _quantile(ages, 0.99),
        "redis_max_s": round(max(ages), 4) if ages else None,
        "redis_entities": len(ages),
    }


def _freshness(text: str) -> dict[float, float]:
    """Cumulative bucket counts of signalops_features_freshness_seconds by upper bound."""
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "signalops_features_freshness_seconds":
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                out[float(s.labels["le"])] = s.value
    return out


def _bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Quantile of a cumulative histogram, linear within the bucket (as PromQL does)."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lo, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lo
            return round(lo + (le - lo) * (rank - below) / max(count - below, 1e-9), 4)
        lo, below = le, count
    return None


def _share_le(buckets: list[tuple[float, float]], bound: float) -> float:
    total = buckets[-1][1] if buckets else 0.0
    return next((c for le, c in buckets if le >= bound), 0.0) / total if total else math.nan


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


async def _redis_ages(url: str, newest: dict[bytes, float]) -> list[float]:
    """Per entity: its vector's updated_at minus the ingested_at of its newest signal."""
    import redis.asyncio as aioredis

    view = load_definitions(REPO / "signalops.yaml").feature_views[0]
    client = aioredis.Redis.from_url(url)
    try:
        keys = list(newest)
        docs = await client.mget([vector_key(view.name, view.version, k.decode()) for k in keys])
    finally:
        await client.aclose()
    return [json.loads(d)["updated_at"] - newest[k] for k, d in zip(keys, docs, strict=True) if d]


# report -----------------------------------------------------------------------------


def report(
    console: Console, results: dict[str, dict[str, object]], args: argparse.Namespace
) -> None:
    table = Table(title="features service (python -m services.features.main), Tansu + redis-server")
    for column in ("scenario", "figure", "value", "target", "verdict"):
        table.add_column(column, justify="right" if column == "value" else "left")

    def row(sc: str, fig: str, value: object, target: str = "", ok: bool | None = None) -> None:
        v = f"{value:,}" if isinstance(value, int) else str(value)
        table.add_row(sc, fig, v, target, "" if ok is None else ("met" if ok else "NOT met"))

    if a := results.get("a"):
        label = f"a: {a['signals']:,} signals, {a['entities']:,} fresh entities ({a['mode']})"
        if a["mode"] == "backlog":
            row(label, "produce (bench producer) signals/s", a["produce_rate"])
            row(label, "drain signals/s", a["rate"], f">= {RATE:,}", a["rate"] >= RATE)  # type: ignore[operator]
            row(label, "slowest 10 s signals/s", a["slowest_10s_rate"])
            row(label, "signals/s by quarter of the drain", a["rate_by_quarter"])
            row(label, "drain s / max lag", f"{a['drain_s']} / {a['max_lag']:,}")
            row(
                label,
                "service CPU s / signals per CPU s",
                f"{a['service_cpu_s']} / {a['signals_per_cpu_s']:,}",
            )
            row(label, "bare aiokafka consume signals/s", a["bare_consume_rate"])
            row(label, "drain / bare consume", a["ratio_to_bare_consume"])
        else:
            row(label, "sent signals/s", a["sent_rate"], f"{RATE:,}")
            row(
                label,
                "max lag / median lag 2nd half",
                f"{a['max_lag']:,} / {a['median_lag_2nd_half']:,}",
            )
            row(label, "catch-up after last send s", a["catch_up_s"])
    if b := results.get("b"):
        label = f"b: {b['signals']:,} signals, {b['entities']} entities"
        row(label, f"signals/s, {b['history']} events of history", b["history_rate"])
        row(label, "signals/s, fresh entities", b["fresh_rate"])
        row(
            label,
            "ratio history / fresh",
            b["ratio"],
            f">= {HISTORY_RATIO}",
            b["ratio"] >= HISTORY_RATIO,  # type: ignore[operator]  # a float
        )
    if c := results.get("c"):
        label = f"c: {c['sent_rate']:,}/s for {c['seconds']} s, {c['entities']:,} entities"
        p99 = c["hist_p99_s"]
        row(label, "freshness p50 s (histogram)", c["hist_p50_s"])
        row(
            label,
            "freshness p99 s (histogram)",
            p99,
            f"<= {FRESH_P99_S}",
            p99 is not None and p99 <= FRESH_P99_S,  # type: ignore[operator]  # a float
        )
        row(label, "share <= 250 ms (histogram)", c["hist_share_le_250ms"], ">= 0.99")
        row(
            label,
            "freshness p50 / p99 / max s (Redis)",
            f"{c['redis_p50_s']} / {c['redis_p99_s']} / {c['redis_max_s']}",
        )
        row(label, "max lag", c["max_lag"])
    console.print(table)
    print(json.dumps({"bench": "features_throughput", "args": _args(args), **results}, default=str))


def _args(args: argparse.Namespace) -> dict[str, object]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


async def run(args: argparse.Namespace) -> None:
    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="features-bench-") as tmp:
        workdir = Path(tmp)
        logs = Path(args.logs) if args.logs else workdir
        logs.mkdir(parents=True, exist_ok=True)
        results: dict[str, dict[str, object]] = {}
        with stack(workdir) as st:
            for name, scenario in (("a", scenario_a), ("b", scenario_b), ("c", scenario_c)):
                if args.only and name not in args.only:
                    continue
                started = time.perf_counter()
                console.print(f"scenario {name} ...")
                results[name] = await scenario(st, args, logs)
                console.print(f"scenario {name}: {time.perf_counter() - started:.0f} s")
        report(console, results, args)


def main() -> None:
    """Parse the sizes, run the scenarios, print the table and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="a: backlog = seconds x 20,000")
    parser.add_argument("--entities", type=int, default=25_000, help="a and c: entities")
    parser.add_argument("--hot", type=int, default=100, help="b: entities with history")
    parser.add_argument("--history", type=int, default=600, help="b: events per hot entity")
    parser.add_argument("--b-signals", type=int, default=0, help="b: backlog (default as a)")
    parser.add_argument("--fresh-seconds", type=float, default=30.0, help="c: paced seconds")
    parser.add_argument("--only", default="", help="scenarios to run, e.g. 'ac'")
    parser.add_argument(
        "--paced-a", action="store_true", help="a: produce at 20,000/s while the service runs"
    )
    parser.add_argument(
        "--profile", type=Path, help="a: py-spy raw stacks of the service to PATH.txt"
    )
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument(
        "--workers", type=int, default=1, help="a: SIGNALOPS_FEATURES_WORKERS of the service"
    )
    parser.add_argument(
        "--batch-records", type=int, default=2000, help="a: SIGNALOPS_BATCH_RECORDS"
    )
    parser.add_argument("--logs", help="folder for the service logs (default: temporary)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
