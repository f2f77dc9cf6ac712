"""Shared settings that cannot be misread: environment, admin token, replication."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.common.settings import Settings


def test_environment_is_development_or_production() -> None:
    """A typo or another name is refused at start, naming the allowed values."""
    with pytest.raises(ValidationError, match="'development' or 'production'"):
        Settings(environment="prod")  # type: ignore[arg-type]


def test_placeholder_token_only_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    """The development placeholder token is refused in production; a real one passes."""
    monkeypatch.delenv("SIGNALOPS_ADMIN_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="SIGNALOPS_ADMIN_TOKEN is the development"):
        Settings(environment="production")
    assert Settings(environment="production", admin_token="a-real-secret").environment == (
        "production"
    )
    assert Settings().admin_token.get_secret_value() == "dev-admin-token"


def test_replication_follows_the_environment_unless_set() -> None:
    """1/1 in development, 3/2 in production; explicit settings win."""
    dev = Settings()
    assert (dev.replication_factor, dev.min_insync_replicas) == (1, 1)
    prod = Settings(environment="production", admin_token="x" * 16)
    assert (prod.replication_factor, prod.min_insync_replicas) == (3, 2)
    two = Settings(environment="production", admin_token="x" * 16, kafka_replication_factor=2)
    assert (two.replication_factor, two.min_insync_replicas) == (2, 2)
    one = Settings(kafka_replication_factor=5, kafka_min_insync_replicas=3)
    assert (one.replication_factor, one.min_insync_replicas) == (5, 3)
