"""Helpers for tests and benchmarks: deliveries as the Kafka runtime would hand them over,
a paused process, and services started as `signalops up` starts them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from libs.common.clients.kafka.deliveries import Delivery
from libs.common.schemas import Message

M = TypeVar("M", bound=Message)
REPO = Path(__file__).resolve().parents[2]


def delivery(
    topic: str, message: M, offset: int = 0, *, partition: int = 0, key: str | None = None
) -> Delivery[M]:
    """One decoded delivery of `message` at topic/partition/offset."""
    return Delivery(message, topic, partition, offset, key, message.to_bytes())


def deliveries(
    topic: str, messages: Sequence[M], first_offset: int = 0, *, partition: int = 0
) -> list[Delivery[M]]:
    """Consecutive deliveries of `messages`, starting at `first_offset`."""
    return [
        delivery(topic, m, first_offset + i, partition=partition) for i, m in enumerate(messages)
    ]


def raw_delivery(
    topic: str, value: bytes, offset: int = 0, key: str | None = None
) -> Delivery[bytes]:
    """A delivery of raw bytes (subscriptions without a schema)."""
    return Delivery(value, topic, 0, offset, key, value)


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` for the block (a broker or Redis that stops answering), then SIGCONT."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def spawn_service(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m module` from the repository root, as `signalops up` starts a service;
    its output is appended to `log` (a restarted service keeps one log)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def stop_service(proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
