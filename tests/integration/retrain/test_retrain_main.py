"""`python -m services.retrain.main` as the CLI spawns it: env config, bootstrap, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from libs.common.definitions import load_definitions
from libs.common.net import free_port
from libs.common.schemas import ModelChanged

REPO = Path(__file__).resolve().parents[3]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _env(settings, metrics_port: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = dict(os.environ)
    env.update(
        {
            "SIGNALOPS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "SIGNALOPS_KAFKA_PARTITIONS": str(settings.kafka_partitions),
            "SIGNALOPS_RAY_ADDRESS": settings.ray_address,
            "SIGNALOPS_MLFLOW_TRACKING_URI": settings.tracking_uri,
            "SIGNALOPS_DATA_DIR": str(settings.data_dir),
            "SIGNALOPS_DEFINITIONS": str(settings.definitions),
            "SIGNALOPS_RETRAIN_METRICS_PORT": str(metrics_port),
            "SIGNALOPS_BOOTSTRAP_ENTITIES": "20",
            "SIGNALOPS_BOOTSTRAP_STEPS": "50",
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        }
    )
    env.update(
        {f"SIGNALOPS_TOPICS__{k.upper()}": v for k, v in settings.topics.model_dump().items()}
    )
    return env


async def test_main_bootstraps_serves_metrics_and_stops_on_sigterm(
    kafka_bootstrap: str,
    retrain_settings,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The module entry point reads SIGNALOPS_* env, announces its bootstrap, exits on SIGTERM."""
    settings = retrain_settings(kafka_bootstrap=kafka_bootstrap)
    name = load_definitions(settings.definitions).models[0].name
    metrics_port = free_port()
    log_path = tmp_path / "retrain.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.retrain.main",
            cwd=REPO,
            env=_env(settings, metrics_port),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    models = AIOKafkaConsumer(
        settings.topics.models,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    try:
        # The process creates its topics; wait (bounded) for the bootstrap's promotion.
        seen: list[ModelChanged] = []
        deadline = asyncio.get_running_loop().time() + 180
        await models.start()
        while not any(m.kind == "promoted" for m in seen):
            assert proc.returncode is None, log_path.read_text()[-3000:]
            assert asyncio.get_running_loop().time() < deadline, "no bootstrap promotion"
            for records in (await models.getmany(timeout_ms=500)).values():
                seen.extend(ModelChanged.from_bytes(r.value) for r in records)
        assert [(m.kind, m.model, m.version) for m in seen] == [
            ("registered", name, "1"),
            ("promoted", name, "1"),
        ]

        body = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
        assert f'signalops_retrain_runs_total{{model="{name}",result="promoted"}} 1.0' in body

        # SIGTERM: the consumers finish their batch and the process exits cleanly.
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, log_path.read_text()[-3000:]
    finally:
        await models.stop()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
