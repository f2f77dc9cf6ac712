"""Settings of the features service."""

from __future__ import annotations

from pydantic import Field

from libs.common.settings import Settings


class FeaturesSettings(Settings):
    consumer_group: str = "features"
    write_offline: bool = True
    vector_ttl_s: float = Field(
        7 * 86400, gt=0, description="Feature vectors expire after this long without updates."
    )
