"""Fixtures of the ingest integration tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from libs.common.settings import Settings
from services.ingest.settings import IngestSettings
from tests.integration.ingest.ingest_server import MakeIngestSettings, ingest_settings


@pytest.fixture(name="make_ingest_settings")
def _make_ingest_settings(
    make_settings: Callable[..., Settings], kafka_bootstrap: str, redis_url: str, unique: str
) -> MakeIngestSettings:
    """`ingest_settings` on the session broker and Redis; keyword overrides pass through."""

    async def make(**overrides: object) -> IngestSettings:
        return await ingest_settings(make_settings, kafka_bootstrap, redis_url, unique, **overrides)

    return make
