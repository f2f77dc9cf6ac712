"""Serve under load, against a baseline measured in the same run.

Needs a running stack (`signalops up`). Seeds features for some entities through
ingest, then drives, one phase after the other, for the same time and concurrency:
  1. GET /healthz on serve: the floor of the ingress path (HAProxy, replica, FastAPI);
  2. POST /v1/predict: the same path plus Redis read, LightGBM and the prediction log;
  3. POST /v1/predict/batch with 100 entities: rows per second.
The ratios (2 vs 1) are what to compare across machines; absolute figures are
noisy here (2 shared cores, and the load generator runs on the same cores).

    .venv/bin/python bench/serve_load.py --seconds 10 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.definitions import load_definitions
from libs.common.settings import Settings
from libs.common.synthetic import SyntheticConfig, SyntheticSource


async def _phase(
    client: httpx.AsyncClient, seconds: float, concurrency: int, request
) -> tuple[int, int, list[float]]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    errors = 0

    async def worker(i: int) -> None:
        nonlocal errors
        n = 0
        while time.monotonic() < deadline:
            t = time.perf_counter()
            resp = await request(client, i, n)
            latencies.append((time.perf_counter() - t) * 1000)
            errors += resp.status_code != 200
            n += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return len(latencies), errors, latencies


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--entities", type=int, default=200)
    args = parser.parse_args()
    settings = Settings()
    defs = load_definitions(settings.definitions)
    model = defs.models[0]
    source = defs.source(defs.views_of_model(model)[0].source)
    synthetic = SyntheticSource(
        source, SyntheticConfig(entities=args.entities, seed=3), entity_prefix="bench"
    )
    ids = [e.entity_id for e in synthetic.entities]
    serve = f"http://{settings.serve_host}:{settings.serve_port}"
    ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        now = datetime.now(UTC)
        body = [synthetic.signal(e, now) for e in synthetic.entities]
        (await client.post(f"{ingest}/v1/signals", json=body)).raise_for_status()
        for _ in range(60):  # bounded wait for the features of the last entity
            r = await client.post(f"{serve}/v1/predict", json={"entity_id": ids[-1]})
            if r.json()["model"]["variant"] != "fallback":
                break
            await asyncio.sleep(0.5)

        async def healthz(c: httpx.AsyncClient, i: int, n: int) -> httpx.Response:
            return await c.get(f"{serve}/healthz")

        async def predict(c: httpx.AsyncClient, i: int, n: int) -> httpx.Response:
            return await c.post(
                f"{serve}/v1/predict", json={"entity_id": ids[(i * 7919 + n) % len(ids)]}
            )

        batch_body = {"requests": [{"entity_id": e} for e in ids[:100]]}

        async def batch(c: httpx.AsyncClient, i: int, n: int) -> httpx.Response:
            return await c.post(f"{serve}/v1/predict/batch", json=batch_body)

        results = {}
        for name, fn in [
            ("GET /healthz (baseline)", healthz),
            ("POST /v1/predict", predict),
            ("POST /v1/predict/batch x100", batch),
        ]:
            results[name] = await _phase(client, args.seconds, args.concurrency, fn)
    console = Console()
    table = Table("phase", "requests/s", "rows/s", "p50 ms", "p99 ms", "errors")
    base_rps = results["GET /healthz (baseline)"][0] / args.seconds
    for name, (count, errors, lat) in results.items():
        rps = count / args.seconds
        rows = rps * (100 if "batch" in name else 1)
        table.add_row(
            name,
            f"{rps:.0f}",
            f"{rows:.0f}",
            f"{statistics.median(lat):.1f}",
            f"{_pct(lat, 0.99):.1f}",
            str(errors),
        )
    console.print(table)
    predict_rps = results["POST /v1/predict"][0] / args.seconds
    console.print(
        f"predict / healthz throughput ratio: {predict_rps / base_rps:.2f} "
        f"(concurrency {args.concurrency}, {args.seconds:.0f} s per phase)"
    )


if __name__ == "__main__":
    asyncio.run(main())
