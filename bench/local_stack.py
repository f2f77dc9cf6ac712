"""The benchmarks' broker and Redis: a memory-only Tansu and a non-persistent
redis-server on free loopback ports, stopped on exit."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from libs.common.binaries import redis_command, tansu_command
from libs.common.net import free_port, wait_for_port
from libs.common.testing import stop_service


@contextlib.contextmanager
def tansu_and_redis(workdir: Path) -> Iterator[tuple[str, str]]:
    """Yields (Kafka bootstrap, Redis URL); Tansu logs to workdir/tansu.log."""
    kafka_port, redis_port = free_port(), free_port()
    (workdir / "redis").mkdir()
    with open(workdir / "tansu.log", "wb") as out:
        tansu = subprocess.Popen(tansu_command(kafka_port), stdout=out, stderr=subprocess.STDOUT)
    redis = subprocess.Popen(
        redis_command(redis_port, str(workdir / "redis"), persist=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(kafka_port)
        wait_for_port(redis_port)
        yield f"127.0.0.1:{kafka_port}", f"redis://127.0.0.1:{redis_port}/0"
    finally:
        for p in (redis, tansu):
            stop_service(p, timeout_s=20)
