"""Settings of the features service."""

from __future__ import annotations

from pydantic import Field

from libs.common.settings import Settings


class FeaturesSettings(Settings):
    consumer_group: str = "features"
    write_offline: bool = True
    vector_ttl_s: float = Field(
        7 * 86400,
        gt=0,
        description="Feature vectors and states expire after this long without updates.",
    )
    batch_records: int = Field(
        2000, ge=1, le=100_000, description="Most signals handled per consumed batch."
    )
    compact_every_s: float = Field(
        3600, gt=0, description="How often the offline store's past days are compacted."
    )
    features_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Service processes in the consumer group on this machine (one core each; "
        "more than the topic's partitions sit idle).",
    )
    features_worker_index: int = Field(
        0, ge=0, description="Set by the parent for each worker; worker 0 compacts."
    )
    features_worker_ports_from: int = Field(
        8120, description="Ops ports of workers 1..N-1 (worker 0 uses features_metrics_port)."
    )
