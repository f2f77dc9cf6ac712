"""Where every received record went, as metrics: received = accepted + dead-lettered +
duplicate, per input, always (issue 9). A batch is counted once its effects are
acknowledged; a batch answered 503 was not taken (its client retries it).
"""

from __future__ import annotations

from prometheus_client import Counter

from services.ingest.core.verdicts import Judged

RECEIVED = Counter(
    "signalops_ingest_received_total", "Records received by ingest, per input", ["input"]
)
OUTCOMES = Counter(
    "signalops_ingest_records_total",
    "Where received records went, per input: accepted, dead_lettered or duplicate; "
    "their sum equals signalops_ingest_received_total",
    ["input", "outcome"],
)
DEDUP = Counter(
    "signalops_ingest_dedup_total",
    "Dedup window checks per record: checked, or unchecked (Redis did not answer: the "
    "record was accepted without the check, fail open), and marks that failed",
    ["outcome"],
)


def count_batch(input_label: str, judged: Judged) -> None:
    """Count one acknowledged batch: every record once, in exactly one outcome."""
    accepted, dead, dup = len(judged.valid), len(judged.rejected), len(judged.duplicates)
    RECEIVED.labels(input_label).inc(accepted + dead + dup)
    OUTCOMES.labels(input_label, "accepted").inc(accepted)
    OUTCOMES.labels(input_label, "dead_lettered").inc(dead)
    OUTCOMES.labels(input_label, "duplicate").inc(dup)
