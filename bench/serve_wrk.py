"""Serve under wrk load, against its own ingress floor and a plain server, in one run.

Needs a running stack (`signalops up`) and wrk (`apt-get install wrk`). Seeds features
for `--entities` entities through ingest, then runs `wrk -t2 -c16` for `--seconds`
each, one phase after the other, all on 127.0.0.1:
  1. GET /healthz on serve: the floor of the ingress path (HAProxy, replica, FastAPI);
  2. POST /v1/predict, a Lua script cycling over the seeded entities;
  3. POST /v1/predict/batch with 100 entities per call (rows/s);
  4. the plain baseline: uvicorn + Starlette doing the same Redis read (the online
     store's `fv:<view>:v<version>:<entity>` JSON) and the same LightGBM model (the
     served champion, read from the registry), started by this script;
  5. in process: the same Redis read and LightGBM predict on the same 100-entity
     batches in one loop, no HTTP (the batch path's ceiling);
  6. overload: the sustainable rate is phase 2's req/s at `--connections`; then two wrk
     processes run at once, one sending only `X-Priority: high` on about 20% of the
     connections, one only `X-Priority: low` on enough connections to fill every
     replica's low limit and queue and more (see `overload_connections`), and a third,
     one-connection wrk of low requests in the middle of the run times each answer
     by status, so the 503s' own latency is known (issue 8, Performance "Overload").
The ratios are what to compare across machines (2 shared cores here, and wrk runs on
them too): predict / healthz, predict / baseline, batch rows/s / in-process rows/s.
With `--cpu` each phase also shows where the machine's CPU went (per process group).

    .venv/bin/python bench/serve_wrk.py --seconds 10
    .venv/bin/python bench/serve_wrk.py --seconds 10 --phases healthz,predict --cpu
    .venv/bin/python bench/serve_wrk.py --seconds 10 --phases predict,overload --cpu
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import lightgbm as lgb
import numpy as np
import orjson
import psutil
import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.definitions import Definitions, ModelDefinition, load_definitions
from libs.common.registry import MlflowRegistry
from libs.common.settings import Settings
from libs.common.synthetic import SyntheticConfig, SyntheticSource
from services.serve.settings import ServeSettings

BATCH = 100
PHASES = ("healthz", "predict", "batch", "baseline", "inprocess", "overload")

# wrk prints this line from `done`: one JSON object per phase, parsed below.
_DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

# Entities are spread over the requests with a stride (a prime), each thread starting
# elsewhere, so consecutive requests hit different keys as real traffic would.
_CYCLE_LUA = """
local bodies = {%s}
local n = #bodies
local i = 0
local path = "%s"
local headers = {["Content-Type"] = "application/json"}
setup = function(thread)
  thread:set("offset", tostring(math.random(1, n)))
end
init = function(args)
  i = tonumber(offset) or 0
end
request = function()
  i = i + 1
  return wrk.format("POST", path, headers, bodies[(i * 7919) %% n + 1])
end
"""


# Overload: one priority per wrk process; `response` counts answers by status, summed
# over the threads in `done`. With `timed` (one connection per thread, so a thread's
# requests and answers strictly alternate) each answer is also timed, by status, on
# CLOCK_MONOTONIC through LuaJIT's FFI: wrk's own histogram cannot tell a 503 from a 200.
_OVERLOAD_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } serve_wrk_timespec;
int clock_gettime(int clk, serve_wrk_timespec *tp);
]]
local ts = ffi.new("serve_wrk_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end
local bodies = {%(bodies)s}
local n = #bodies
local i = 0
local timed = %(timed)s
local headers = {["Content-Type"] = "application/json", ["X-Priority"] = "%(priority)s"}
local threads = {}
local sent_us = 0
c200, c503, cother, n200, n503, nfull, nwait = 0, 0, 0, 0, 0, 0, 0
lat200, lat503, latfull, latwait = {}, {}, {}, {}
setup = function(thread)
  thread:set("offset", tostring(math.random(1, n)))
  table.insert(threads, thread)
end
init = function(args)
  i = tonumber(offset) or 0
end
request = function()
  i = i + 1
  if timed then sent_us = now_us() end
  return wrk.format("POST", "/v1/predict", headers, bodies[(i * 7919) %% n + 1])
end
response = function(status, hdrs, body)
  if status == 200 then
    c200 = c200 + 1
    if timed then n200 = n200 + 1; lat200[n200] = now_us() - sent_us end
  elseif status == 503 then
    c503 = c503 + 1
    if timed then
      local took = now_us() - sent_us
      n503 = n503 + 1; lat503[n503] = took
      -- the limiter's message says why: shed on arrival, or after waiting in the queue
      if string.find(body, "queue full", 1, true) then
        nfull = nfull + 1; latfull[nfull] = took
      elseif string.find(body, "no slot within", 1, true) then
        nwait = nwait + 1; latwait[nwait] = took
      end
    end
  else
    cother = cother + 1
  end
end
local function pct(sorted, p)
  if #sorted == 0 then return -1 end
  return sorted[math.min(#sorted, math.floor(#sorted * p / 100) + 1)]
end
done = function(summary, latency, requests)
  local s200, s503, sother, all200, all503, full, wait = 0, 0, 0, {}, {}, {}, {}
  for _, t in ipairs(threads) do
    s200 = s200 + t:get("c200")
    s503 = s503 + t:get("c503")
    sother = sother + t:get("cother")
    for _, v in ipairs(t:get("lat200")) do all200[#all200 + 1] = v end
    for _, v in ipairs(t:get("lat503")) do all503[#all503 + 1] = v end
    for _, v in ipairs(t:get("latfull")) do full[#full + 1] = v end
    for _, v in ipairs(t:get("latwait")) do wait[#wait + 1] = v end
  end
  table.sort(all200)
  table.sort(all503)
  table.sort(full)
  table.sort(wait)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"status_errors":%%d,"socket_errors":%%d,'
    .. '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,'
    .. '"c200":%%d,"c503":%%d,"cother":%%d,"timed200":%%d,"timed503":%%d,'
    .. '"p50_200_us":%%d,"p99_200_us":%%d,"p50_503_us":%%d,"p99_503_us":%%d,"max_503_us":%%d,'
    .. '"timed_full":%%d,"p50_full_us":%%d,"timed_wait":%%d,"p50_wait_us":%%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    s200, s503, sother, #all200, #all503,
    pct(all200, 50), pct(all200, 99), pct(all503, 50), pct(all503, 99), pct(all503, 100),
    #full, pct(full, 50), #wait, pct(wait, 50)))
end
"""


@dataclass
class PhaseResult:
    name: str
    requests: int
    seconds: float
    rows_per_request: int
    errors: int
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float] | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rps * self.rows_per_request


def _lua_string(s: str) -> str:
    return json.dumps(s)  # a JSON string literal of ASCII text is a valid Lua literal


def _cycle_script(path: str, bodies: Sequence[bytes]) -> str:
    listed = ",\n".join(_lua_string(b.decode()) for b in bodies)
    return _CYCLE_LUA % (listed, path) + _DONE_LUA


class WrkProcess:
    """One wrk started in the background with its Lua script; `result` waits for it."""

    def __init__(
        self, name: str, url: str, script: str, *, seconds: float, threads: int, connections: int
    ) -> None:
        self.name = name
        self.seconds = seconds
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(script)
        self._script = f.name
        command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        command += ["--timeout", "10s", "-s", f.name, url]
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def result(self) -> dict[str, int]:
        """The JSON object written by the script's `done` (counts, latencies in µs)."""
        try:
            out, err = self._process.communicate(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            out, err = self._process.communicate()
        finally:
            os.unlink(self._script)
        match = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
        if self._process.returncode != 0 or match is None:
            raise RuntimeError(f"wrk failed for {self.name}: {out[-500:]} {err[-500:]}")
        return dict(json.loads(match.group(1)))


def run_wrk(
    name: str,
    url: str,
    script: str,
    *,
    seconds: float,
    threads: int,
    connections: int,
    rows_per_request: int = 1,
    cpu_sampler: CpuSampler | None = None,
) -> PhaseResult:
    """One wrk run; its Lua `done` reports counts and latency percentiles as JSON."""
    if cpu_sampler:
        cpu_sampler.start()
    process = WrkProcess(
        name, url, script, seconds=seconds, threads=threads, connections=connections
    )
    r = process.result()
    cpu = cpu_sampler.stop(wrk_exited=True) if cpu_sampler else None
    return PhaseResult(
        name,
        r["requests"],
        r["duration_us"] / 1e6,
        rows_per_request,
        r["status_errors"] + r["socket_errors"],
        r["p50_us"] / 1000,
        r["p99_us"] / 1000,
        cpu,
    )


# ---- overload: high and low priority at once -----------------------------------------


@dataclass
class OverloadProcess:
    """What one wrk process of the overload phase saw (latencies in ms)."""

    name: str
    connections: int
    seconds: float
    ok: int  # 200
    shed: int  # 503
    other: int  # any other status
    socket_errors: int  # connect, read, write errors and timeouts: never answered
    p50_ms: float
    p99_ms: float
    shed_p50_ms: float | None = None  # timed probe only: the 503s alone
    shed_p99_ms: float | None = None
    shed_max_ms: float | None = None
    ok_p50_ms: float | None = None
    ok_p99_ms: float | None = None
    shed_full: int = 0  # timed 503s shed on arrival (queue full) ...
    shed_full_p50_ms: float | None = None
    shed_waited: int = 0  # ... and after waiting their class's max wait in the queue
    shed_waited_p50_ms: float | None = None

    @property
    def answered_per_s(self) -> float:
        return (self.ok + self.shed + self.other) / self.seconds if self.seconds else 0.0

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def success(self) -> float:
        sent = self.ok + self.shed + self.other + self.socket_errors
        return self.ok / sent if sent else 0.0

    @classmethod
    def of(cls, name: str, connections: int, r: dict[str, int]) -> OverloadProcess:
        def ms(key: str) -> float | None:
            return r[key] / 1000 if r[key] >= 0 else None

        return cls(
            name,
            connections,
            r["duration_us"] / 1e6,
            r["c200"],
            r["c503"],
            r["cother"],
            r["socket_errors"],
            r["p50_us"] / 1000,
            r["p99_us"] / 1000,
            ms("p50_503_us") if r["timed503"] else None,
            ms("p99_503_us") if r["timed503"] else None,
            ms("max_503_us") if r["timed503"] else None,
            ms("p50_200_us") if r["timed200"] else None,
            ms("p99_200_us") if r["timed200"] else None,
            r["timed_full"],
            ms("p50_full_us") if r["timed_full"] else None,
            r["timed_wait"],
            ms("p50_wait_us") if r["timed_wait"] else None,
        )


@dataclass
class OverloadResult:
    sustainable_rps: float  # the predict phase's req/s at --connections
    processes: list[OverloadProcess]  # high, low, then the timed low probe
    cpu: dict[str, float] | None = None

    @property
    def offered_ratio(self) -> float:
        """Answers of every kind per second over the sustainable rate (closed loop: what
        the clients managed to send, since each connection waits for its answer)."""
        answered = sum(p.answered_per_s for p in self.processes)
        return answered / self.sustainable_rps if self.sustainable_rps else 0.0


def serve_replicas(settings: ServeSettings) -> int:
    """Running replicas of the serve app per Ray's dashboard API (`signalops up` runs
    one, whatever ServeSettings' default says); the setting when the API does not answer."""
    url = f"http://127.0.0.1:{settings.ray_dashboard_port}/api/serve/applications/"
    try:
        apps = httpx.get(url, timeout=5).raise_for_status().json()["applications"]
        return sum(
            len(d.get("replicas", [])) for a in apps.values() for d in a["deployments"].values()
        )
    except (httpx.HTTPError, KeyError, ValueError):
        return settings.serve_num_replicas


def overload_connections(
    settings: ServeSettings, replicas: int, connections: int
) -> tuple[int, int]:
    """Connections of the low and the high wrk process, high about 20% of all.

    wrk is closed-loop: a replica sheds low requests only while its in-flight count is
    at the low limit and the low queue is full, so the low process needs more
    connections than all replicas admit and queue for low
    (replicas x (low limit + low queue)), plus `connections` more to keep the surplus
    beyond it, and at least 4x the sustainable run's connections.
    """
    admitted = replicas * (settings.priority_low_limit + settings.priority_queue_low)
    low = max(4 * connections, admitted + connections)
    return low, max(1, round(low / 4))  # high: 20% of low + high


def _overload_script(bodies: Sequence[bytes], priority: str, *, timed: bool) -> str:
    listed = ",\n".join(_lua_string(b.decode()) for b in bodies)
    return _OVERLOAD_LUA % {
        "bodies": listed,
        "priority": priority,
        "timed": "true" if timed else "false",
    }


def run_overload(
    url: str,
    bodies: Sequence[bytes],
    sustainable_rps: float,
    *,
    seconds: float,
    threads: int,
    low_connections: int,
    high_connections: int,
    cpu_sampler: CpuSampler | None = None,
) -> OverloadResult:
    """High and low wrk at once for `seconds`; a one-connection timed low probe runs in
    the middle half, after the replicas' queues have filled."""
    if cpu_sampler:
        cpu_sampler.start()
    high = WrkProcess("high", url, _overload_script(bodies, "high", timed=False),
                      seconds=seconds, threads=threads, connections=high_connections)  # fmt: skip
    low = WrkProcess("low", url, _overload_script(bodies, "low", timed=False),
                     seconds=seconds, threads=threads, connections=low_connections)  # fmt: skip
    time.sleep(seconds / 4)
    probe = WrkProcess("low probe", url, _overload_script(bodies, "low", timed=True),
                       seconds=max(1.0, seconds / 2), threads=1, connections=1)  # fmt: skip
    results = [
        OverloadProcess.of("X-Priority: high", high_connections, high.result()),
        OverloadProcess.of("X-Priority: low", low_connections, low.result()),
        OverloadProcess.of("low probe (timed, 1 conn)", 1, probe.result()),
    ]
    cpu = cpu_sampler.stop(wrk_exited=True) if cpu_sampler else None
    return OverloadResult(sustainable_rps, results, cpu)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _overload_table(result: OverloadResult) -> Table:
    title = f"overload (sustainable: {result.sustainable_rps:,.0f} req/s predict)"
    table = Table(
        "process", "conns", "answers/s", "200/s", "503", "other", "sock err", "success %",
        "p50 ms", "p99 ms", "200 p50/p99", "503 p50/p99/max", title=title,
    )  # fmt: skip
    for p in result.processes:
        table.add_row(
            p.name,
            str(p.connections),
            f"{p.answered_per_s:,.0f}",
            f"{p.ok_per_s:,.0f}",
            str(p.shed),
            str(p.other),
            str(p.socket_errors),
            f"{100 * p.success:.2f}",
            f"{p.p50_ms:.1f}",
            f"{p.p99_ms:.1f}",
            "-" if p.ok_p50_ms is None else f"{_ms(p.ok_p50_ms)}/{_ms(p.ok_p99_ms)}",
            "-"
            if p.shed_p50_ms is None
            else f"{_ms(p.shed_p50_ms)}/{_ms(p.shed_p99_ms)}/{_ms(p.shed_max_ms)}",
        )
    return table


def _overload_verdict(console: Console, result: OverloadResult) -> None:
    high, low, probe = result.processes
    served = sum(p.ok_per_s for p in result.processes)
    console.print(
        f"offered (answers of every kind) / sustainable: {result.offered_ratio:.1f}x; "
        f"served (200) / sustainable: {served / result.sustainable_rps:.2f}x"
    )
    console.print(f"high p99: {high.p99_ms:.1f} ms (target ≤ 50)")
    console.print(f"high success: {100 * high.success:.2f}% (target ≥ 99.9)")
    shed_share = low.shed / max(1, low.ok + low.shed + low.other + low.socket_errors)
    console.print(f"low shed: {100 * shed_share:.1f}% of its requests answered 503")
    if probe.shed_p99_ms is None:
        console.print("503 latency: the probe got no 503 (low was not shed while it ran)")
    else:
        console.print(
            f"503 latency (probe, client side, {probe.shed} answers): p50 "
            f"{probe.shed_p50_ms:.1f} ms, p99 {probe.shed_p99_ms:.1f} ms (target ≤ 5), "
            f"max {_ms(probe.shed_max_ms)} ms; shed on arrival (queue full): "
            f"{probe.shed_full}, p50 {_ms(probe.shed_full_p50_ms)} ms; shed after waiting "
            f"in the queue: {probe.shed_waited}, p50 {_ms(probe.shed_waited_p50_ms)} ms"
        )


# ---- where the CPU goes ------------------------------------------------------------

_GROUPS: list[tuple[str, Callable[[str], bool]]] = [
    ("replica", lambda c: "ServeReplica" in c),
    ("haproxy", lambda c: "haproxy" in c),
    ("broker", lambda c: "tansu" in c),
    ("redis", lambda c: "redis-server" in c),
    ("retrain", lambda c: "services.retrain.main" in c),
    ("features", lambda c: "services.features.main" in c),
    ("ingest", lambda c: "services.ingest.main" in c),
    ("baseline", lambda c: "--baseline-server" in c or "baseline_serve" in c),
    ("wrk", lambda c: c.startswith("wrk ")),
    ("ray other", lambda c: "ray" in c.lower()),
    ("bench", lambda c: "serve_wrk" in c),
]


def _idle_seconds() -> float:
    """Idle CPU seconds of the whole machine so far (all cores)."""
    return float(psutil.cpu_times().idle)


class CpuSampler:
    """CPU seconds per process group between start and stop, as % of one core.

    Counts only the stack's processes (those whose pid files are in `run_dir`, and
    their descendants: Ray's workers, HAProxy), this script's children (the baseline,
    wrk) and this script, so other work on the machine does not blur the figures.
    """

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = run_dir
        self._before: dict[int, tuple[str, float]] = {}
        self._children_before = 0.0
        self._idle_before = 0.0
        self._t0 = 0.0

    def _roots(self) -> set[int]:
        roots = {os.getpid()}
        for f in self._run_dir.glob("*.pid"):
            try:
                roots.add(int(f.read_text().strip()))
            except ValueError:
                continue
        return roots

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        roots = self._roots()
        out = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.pid not in roots and not any(a.pid in roots for a in p.parents()):
                    continue
                cmd = " ".join(p.info["cmdline"] or [])
                group = next((g for g, match in _GROUPS if match(cmd)), "other")
                t = p.cpu_times()
                out[p.pid] = (group, t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    @staticmethod
    def _children() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def start(self) -> None:
        self._before = self._snapshot()
        self._children_before = self._children()
        self._idle_before = _idle_seconds()
        self._t0 = time.monotonic()

    def stop(self, *, wrk_exited: bool = False) -> dict[str, float]:
        """Args: wrk_exited: wrk ran as this process's child and has been waited for
        (its CPU then shows in RUSAGE_CHILDREN, since it is gone from the process list).
        """
        after = self._snapshot()
        wall = time.monotonic() - self._t0
        used: dict[str, float] = {}
        for pid, (group, cpu) in after.items():
            used[group] = used.get(group, 0.0) + cpu - self._before.get(pid, (group, 0.0))[1]
        if wrk_exited:
            used["wrk"] = self._children() - self._children_before
        used["machine idle"] = _idle_seconds() - self._idle_before if self._idle_before else 0.0
        return {g: 100 * s / wall for g, s in sorted(used.items(), key=lambda x: -x[1])}


# ---- the plain baseline and the in-process loop ------------------------------------


@dataclass(frozen=True)
class StoreLayout:
    """How the model's inputs sit in the online store (one JSON vector per view)."""

    keys: list[str]  # per view: key format with {entity}
    columns: list[tuple[int, str]]  # per model input: (view index, feature name)

    @classmethod
    def of(cls, defs: Definitions, model: ModelDefinition) -> StoreLayout:
        views = {v.name: v.version for v in defs.views_of_model(model)}
        order = list(views)
        keys = [f"fv:{v}:v{views[v]}:{{entity}}" for v in order]
        columns = []
        for ref in model.features:
            view, _, feat = ref.partition(".")
            columns.append((order.index(view), feat))
        return cls(keys, columns)

    def row(self, docs: Sequence[bytes | str | None]) -> list[float]:
        values = [orjson.loads(d)["values"] if d else {} for d in docs]
        out = []
        for view, feat in self.columns:
            v = values[view].get(feat)
            out.append(float(v) if isinstance(v, int | float) else np.nan)
        return out


def baseline_server(model_file: str, redis_url: str, layout: str, port: int) -> None:
    """Plain uvicorn + Starlette: one Redis MGET, one LightGBM predict, orjson answer."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    booster = lgb.Booster(model_file=model_file)
    store = StoreLayout(**json.loads(layout))
    pool = aioredis.from_url(redis_url)

    async def predict(request: Request) -> Response:
        entity = orjson.loads(await request.body())["entity_id"]
        docs = await pool.mget([k.format(entity=entity) for k in store.keys])
        score = float(booster.predict(np.array([store.row(docs)]), num_threads=1)[0])
        return Response(
            orjson.dumps({"entity_id": entity, "score": score}), media_type="application/json"
        )

    app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def inprocess_rows_per_s(
    booster: lgb.Booster,
    store: StoreLayout,
    redis_url: str,
    batches: Sequence[Sequence[str]],
    seconds: float,
) -> PhaseResult:
    """The batch path's ceiling: MGET of a batch's keys, one predict, no HTTP, no log."""
    client = aioredis.from_url(redis_url)
    n = 0
    lat: list[float] = []
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < deadline:
        ids = batches[n % len(batches)]
        t = time.perf_counter()
        keys = [k.format(entity=e) for e in ids for k in store.keys]
        docs = await client.mget(keys)
        width = len(store.keys)
        matrix = np.array([store.row(docs[i : i + width]) for i in range(0, len(docs), width)])
        booster.predict(matrix, num_threads=1)
        lat.append((time.perf_counter() - t) * 1000)
        n += 1
    elapsed = time.monotonic() - started
    await client.aclose()
    lat.sort()
    return PhaseResult(
        "in-process Redis MGET + predict x100",
        n,
        elapsed,
        BATCH,
        0,
        lat[len(lat) // 2],
        lat[min(len(lat) - 1, int(0.99 * len(lat)))],
    )


# ---- seeding -----------------------------------------------------------------------


def seed(settings: Settings, defs: Definitions, entities: int) -> list[str]:
    """Post one signal per entity through ingest; wait (bounded) until serve scores all."""
    model = defs.models[0]
    source = defs.source(defs.views_of_model(model)[0].source)
    synthetic = SyntheticSource(
        source, SyntheticConfig(entities=entities, seed=3), entity_prefix="wrk"
    )
    ids = [e.entity_id for e in synthetic.entities]
    serve = f"http://{settings.serve_host}:{settings.serve_port}"
    ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
    now = datetime.now(UTC)
    with httpx.Client(timeout=30) as client:
        body = [synthetic.signal(e, now) for e in synthetic.entities]
        for i in range(0, len(body), 500):
            client.post(f"{ingest}/v1/signals", json=body[i : i + 500]).raise_for_status()
        deadline = time.monotonic() + 90
        while True:  # bounded wait until every entity is scored, not answered by fallback
            scored = 0
            for i in range(0, len(ids), 500):
                chunk = [{"entity_id": e} for e in ids[i : i + 500]]
                r = client.post(f"{serve}/v1/predict/batch", json={"requests": chunk})
                r.raise_for_status()
                scored += sum(p["model"]["variant"] != "fallback" for p in r.json()["predictions"])
            if scored == len(ids):
                return ids
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {scored} of {len(ids)} entities scored after 90 s")
            time.sleep(1.0)


def champion_model_file(settings: Settings, model: str, into: Path) -> Path:
    registry = MlflowRegistry.from_settings(settings)
    version = registry.champion_version(model)
    if version is None:
        raise RuntimeError(f"model {model!r} has no champion; is the stack up?")
    path = into / f"{model}-v{version}.lgb"
    registry.load_booster(model, version).save_model(str(path))
    return path


# ---- main --------------------------------------------------------------------------


def _table(results: list[PhaseResult]) -> Table:
    table = Table("phase", "req/s", "rows/s", "p50 ms", "p99 ms", "errors", title="serve_wrk")
    for r in results:
        table.add_row(
            r.name,
            f"{r.rps:,.0f}",
            f"{r.rows_per_s:,.0f}",
            f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}",
            str(r.errors),
        )
    return table


def _cpu_table(rows: list[tuple[str, dict[str, float] | None]]) -> Table:
    groups = [g for g, _ in _GROUPS] + ["other", "machine idle"]
    cores = psutil.cpu_count() or 1
    title = f"CPU of the stack's processes, % of one core ({cores} cores = {100 * cores})"
    table = Table("phase", *groups, title=title)
    for name, cpu in rows:
        if cpu is not None:
            table.add_row(name, *(f"{cpu.get(g, 0.0):.0f}" for g in groups))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (≤ 120)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--phases", default=",".join(PHASES), help=f"any of {PHASES}")
    parser.add_argument("--cpu", action="store_true", help="CPU per process group per phase")
    parser.add_argument("--repeat", type=int, default=1, help="run the phases this many times")
    parser.add_argument(
        "--overload-low-connections",
        type=int,
        help="connections of the low-priority wrk (default: see overload_connections)",
    )
    parser.add_argument(
        "--overload-high-connections",
        type=int,
        help="connections of the high-priority wrk (default: 20%% of low + high)",
    )
    parser.add_argument(
        "--baseline-script",
        help="run this baseline server instead of the built-in one (same CLI as "
        "../shared/tools/baseline_serve.py: --model --redis --key --layout --prefix --port)",
    )
    parser.add_argument("--baseline-server", nargs=4, metavar=("MODEL", "REDIS", "LAYOUT", "PORT"))
    args = parser.parse_args()
    if args.baseline_server:  # the baseline's own process (started below)
        model_file, redis_url, layout, port = args.baseline_server
        baseline_server(model_file, redis_url, layout, int(port))
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    seconds = min(max(args.seconds, 1.0), 120.0)
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        sys.exit(f"unknown phases {sorted(unknown)}; known: {PHASES}")
    settings = Settings()
    defs = load_definitions(settings.definitions)
    model = defs.models[0]
    store = StoreLayout.of(defs, model)
    console = Console(width=max(160, shutil.get_terminal_size().columns))
    console.print(f"seeding {args.entities} entities through ingest ...")
    ids = seed(settings, defs, args.entities)
    serve = f"http://{settings.serve_host}:{settings.serve_port}"
    predict_bodies = [orjson.dumps({"entity_id": e}) for e in ids]
    batches = [ids[i : i + BATCH] for i in range(0, len(ids) - BATCH + 1, BATCH)]
    batch_bodies = [orjson.dumps({"requests": [{"entity_id": e} for e in b]}) for b in batches]
    sampler = CpuSampler(settings.data_dir / "run") if args.cpu else None
    wrk = {"seconds": seconds, "threads": args.threads, "connections": args.connections}
    serve_settings = ServeSettings()
    replicas = serve_replicas(serve_settings)
    low_conns, high_conns = overload_connections(serve_settings, replicas, args.connections)
    low_conns = args.overload_low_connections or low_conns
    high_conns = args.overload_high_connections or high_conns

    with tempfile.TemporaryDirectory(prefix="serve_wrk-") as tmp:
        model_file = champion_model_file(settings, model.name, Path(tmp))
        baseline: subprocess.Popen[bytes] | None = None
        port = _free_port()
        if "baseline" in phases:
            layout = json.dumps({"keys": store.keys, "columns": store.columns})
            command = [sys.executable, __file__, "--baseline-server", str(model_file)]
            command += [settings.redis_url, layout, str(port)]
            if args.baseline_script:  # an external baseline with the same work (one view)
                view = defs.views_of_model(model)[0].name
                command = [sys.executable, args.baseline_script, "--model", str(model_file)]
                command += ["--redis", settings.redis_url, "--key", store.keys[0]]
                command += ["--layout", "json", "--prefix", f"{view}__", "--port", str(port)]
            baseline = subprocess.Popen(command)
        try:
            if baseline is not None:
                _wait_baseline(port, predict_bodies[0])
            for round_ in range(max(1, args.repeat)):
                results: list[PhaseResult] = []
                by_phase: dict[str, PhaseResult] = {}
                overload: OverloadResult | None = None
                for phase in phases:
                    ran = len(results)
                    if phase == "healthz":
                        script = 'wrk.method = "GET"\n' + _DONE_LUA
                        name = "GET /healthz (ingress floor)"
                        results.append(run_wrk(name, f"{serve}/healthz", script, **wrk,
                                               cpu_sampler=sampler))  # fmt: skip
                    elif phase == "predict":
                        script = _cycle_script("/v1/predict", predict_bodies)
                        results.append(run_wrk("POST /v1/predict", serve, script, **wrk,
                                               cpu_sampler=sampler))  # fmt: skip
                    elif phase == "batch":
                        script = _cycle_script("/v1/predict/batch", batch_bodies)
                        results.append(run_wrk("POST /v1/predict/batch x100", serve, script,
                                               **wrk, rows_per_request=BATCH,
                                               cpu_sampler=sampler))  # fmt: skip
                    elif phase == "baseline":
                        script = _cycle_script("/v1/predict", predict_bodies)
                        name = "baseline: uvicorn + Starlette predict"
                        results.append(run_wrk(name, f"http://127.0.0.1:{port}", script, **wrk,
                                               cpu_sampler=sampler))  # fmt: skip
                    elif phase == "inprocess":
                        booster = lgb.Booster(model_file=str(model_file))
                        results.append(asyncio.run(inprocess_rows_per_s(
                            booster, store, settings.redis_url, batches, seconds)))  # fmt: skip
                    elif phase == "overload":
                        sustainable = by_phase.get("predict")
                        if sustainable is None:  # the rate to double is measured first
                            script = _cycle_script("/v1/predict", predict_bodies)
                            sustainable = run_wrk("POST /v1/predict", serve, script, **wrk,
                                                  cpu_sampler=sampler)  # fmt: skip
                            results.append(sustainable)
                            by_phase["predict"] = sustainable
                        overload = run_overload(
                            serve, predict_bodies, sustainable.rps, seconds=seconds,
                            threads=args.threads, low_connections=low_conns,
                            high_connections=high_conns, cpu_sampler=sampler,
                        )  # fmt: skip
                    if phase != "overload" and len(results) > ran:
                        by_phase[phase] = results[-1]
                if args.repeat > 1:
                    console.print(f"round {round_ + 1}")
                console.print(_table(results))
                if overload is not None:
                    console.print(_overload_table(overload))
                if args.cpu:
                    rows = [(r.name, r.cpu) for r in results]
                    if overload is not None:
                        rows.append(("overload (high + low + probe)", overload.cpu))
                    console.print(_cpu_table(rows))
                _ratios(console, by_phase)
                if overload is not None:
                    _overload_verdict(console, overload)
        finally:
            if baseline is not None:
                baseline.terminate()
                baseline.wait(10)
    console.print(
        f"wrk -t{args.threads} -c{args.connections} -d{seconds:.0f}s per phase, "
        f"{len(ids)} entities, batches of {BATCH}, all on 127.0.0.1"
    )
    if "overload" in phases:
        console.print(
            f"overload: wrk -t{args.threads} -c{high_conns} (X-Priority: high) and "
            f"wrk -t{args.threads} -c{low_conns} (X-Priority: low) for {seconds:.0f}s at "
            f"once; from {seconds / 4:.1f}s a timed low probe, wrk -t1 -c1 for "
            f"{max(1, round(seconds / 2))}s; {replicas} replica(s), low limit "
            f"{serve_settings.priority_low_limit}, low queue {serve_settings.priority_queue_low}"
        )


def _wait_baseline(port: int, body: bytes) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", content=body, timeout=2)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("the baseline server did not answer within 30 s")


def _ratios(console: Console, by_phase: dict[str, PhaseResult]) -> None:
    healthz, predict = by_phase.get("healthz"), by_phase.get("predict")
    batch, base = by_phase.get("batch"), by_phase.get("baseline")
    inproc = by_phase.get("inprocess")
    lines = []
    if predict and healthz:
        lines.append(f"predict / healthz: {predict.rps / healthz.rps:.2f} (target ≥ 0.85)")
    if predict:
        lines.append(f"predict p99: {predict.p99_ms:.1f} ms (target ≤ 50)")
    if predict and base:
        lines.append(f"predict / baseline: {predict.rps / base.rps:.2f}")
    if batch:
        lines.append(f"batch rows/s: {batch.rows_per_s:,.0f} (target ≥ 50,000)")
    if batch and inproc:
        lines.append(f"batch / in-process rows/s: {batch.rows_per_s / inproc.rows_per_s:.2f}")
    for line in lines:
        console.print(line)


if __name__ == "__main__":
    main()
