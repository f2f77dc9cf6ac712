"""CPU per record of ingest's validation and serialisation, in process (issue 9).

    .venv/bin/python bench/ingest_validate_micro.py

Validates 20,000 parsed sensors signals against the unit tests' definitions, alone and
followed by `to_bytes` (what is published), and prints the best of 7 rounds in process
CPU time per record (CPU time, not wall time: the machine is shared).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.definitions import parse_definitions
from services.ingest.core.batch import parse_json
from services.ingest.core.validation import validate_signal
from tests.unit.ingest.conftest import DEFINITIONS, NOW, iso

RECORDS = 20_000
ROUNDS = 7


def best_us_per_record(run: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best / RECORDS * 1e6


def main() -> None:
    definitions = parse_definitions(DEFINITIONS)
    records = [
        parse_json(
            json.dumps(
                {
                    "source": "sensors",
                    "entity_id": f"device-{i}",
                    "event_time": iso(NOW - timedelta(seconds=i % 100)),
                    "fields": {"temperature": 21.5 + i % 10, "status": "ok", "count": i % 50},
                    "schema_version": 1,
                }
            ).encode()
        )
        for i in range(RECORDS)
    ]

    def validate() -> None:
        for r in records:
            validate_signal(r, definitions, NOW, ingest_version="0.1.0")

    def validate_and_serialise() -> None:
        for r in records:
            validate_signal(r, definitions, NOW, ingest_version="0.1.0").to_bytes()

    print(f"validate_signal: {best_us_per_record(validate):.1f} µs/record")
    print(f"validate_signal + to_bytes: {best_us_per_record(validate_and_serialise):.1f} µs/record")


if __name__ == "__main__":
    main()
