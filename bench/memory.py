"""Start-up time and idle resident memory of the embedded stack.

Runs `signalops up` (unless --no-up), waits for the stack to settle, then sums the
memory of every process of the stack: RSS (counts shared pages in every process,
an upper bound) and PSS (shared pages split among their users, the fair total).

    .venv/bin/python bench/memory.py            # up, measure, down
    .venv/bin/python bench/memory.py --keep     # leave the stack running
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local.stack import LocalStack
from libs.common.settings import Settings

BUDGET_GIB = 3.0


def _kind(p: psutil.Process) -> str:
    cmd = " ".join(p.cmdline())
    for marker, kind in [
        ("tansu", "kafka (tansu)"),
        ("redis-server", "redis"),
        ("haproxy", "haproxy"),
        ("services.ingest", "ingest"),
        ("services.features", "features"),
        ("services.retrain", "retrain"),
        ("gcs_server", "ray gcs"),
        ("raylet", "ray raylet"),
        ("dashboard", "ray dashboard"),
        ("ServeController", "serve controller"),
        ("ServeReplica", "serve replica"),
        ("default_worker", "ray worker"),
        ("ray start", "ray start"),
        ("ray/", "ray other"),
    ]:
        if marker in cmd or marker in p.name():
            return kind
    return p.name()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-up", action="store_true", help="measure a stack already up")
    parser.add_argument("--keep", action="store_true", help="do not run `signalops down`")
    parser.add_argument("--settle", type=float, default=30.0, help="idle seconds before measuring")
    args = parser.parse_args()
    console = Console()
    signalops = str(Path(sys.executable).parent / "signalops")
    up_s = None
    available_before = psutil.virtual_memory().available
    if not args.no_up:
        started = time.monotonic()
        subprocess.run([signalops, "up"], check=True)
        up_s = time.monotonic() - started
    time.sleep(args.settle)
    stack = LocalStack(Settings())
    rss: dict[str, float] = defaultdict(float)
    pss: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for pid in stack.stack_processes():
        try:
            p = psutil.Process(pid)
            mem = p.memory_full_info()
            kind = _kind(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss[kind] += mem.rss
        pss[kind] += getattr(mem, "pss", mem.rss)
        count[kind] += 1
    table = Table("component", "processes", "RSS MiB", "PSS MiB")
    for kind in sorted(rss, key=lambda k: -pss[k]):
        table.add_row(
            kind, str(count[kind]), f"{rss[kind] / 2**20:.0f}", f"{pss[kind] / 2**20:.0f}"
        )
    total_rss, total_pss = sum(rss.values()) / 2**30, sum(pss.values()) / 2**30
    table.add_row(
        "total", str(sum(count.values())), f"{total_rss * 1024:.0f}", f"{total_pss * 1024:.0f}"
    )
    console.print(table)
    if up_s is not None:
        console.print(f"signalops up took {up_s:.1f} s")
    if not args.no_up:
        # The machine-wide view: how much less memory is available with the stack up.
        drop = (available_before - psutil.virtual_memory().available) / 2**30
        console.print(
            f"available memory dropped by {drop:.2f} GiB while the stack is up "
            "(machine-wide, noisy on a shared machine)"
        )
    verdict = "within" if total_pss < BUDGET_GIB else "OVER"
    console.print(
        f"idle PSS {total_pss:.2f} GiB, RSS {total_rss:.2f} GiB: {verdict} the "
        f"{BUDGET_GIB:.0f} GiB budget (PSS is the fair total; RSS double-counts "
        "shared pages)"
    )
    if not args.keep:
        subprocess.run([signalops, "down"], check=True)


if __name__ == "__main__":
    main()
