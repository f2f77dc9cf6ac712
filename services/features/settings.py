"""Settings of the features service."""

from __future__ import annotations

from libs.common.settings import Settings


class FeaturesSettings(Settings):
    consumer_group: str = "features"
    write_offline: bool = True
