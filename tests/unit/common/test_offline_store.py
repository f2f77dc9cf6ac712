"""The offline store: whole-file appends, replay-safe names, included roots."""

from __future__ import annotations

from pathlib import Path

from libs.common.offline import OUTCOMES, OfflineStore


def _row(event_id: str, label: float = 1.0) -> dict[str, object]:
    return {
        "event_id": event_id,
        "model": "m",
        "entity_id": "e",
        "ts": 1.0,
        "label": label,
        "prediction_id": None,
    }


def test_replayed_batch_overwrites_its_file(tmp_path: Path) -> None:
    """The same batch name written twice leaves one file and no duplicate rows."""
    store = OfflineStore(tmp_path)
    store.append(OUTCOMES, [_row("a"), _row("b")], name="outcomes-0-0")
    store.append(OUTCOMES, [_row("a"), _row("b")], name="outcomes-0-0")
    assert len(store.files(OUTCOMES)) == 1
    assert store.read(OUTCOMES).num_rows == 2


def test_included_roots_are_listed_and_deduplicated(tmp_path: Path) -> None:
    """Files of an included root are read too; an event id present in both counts once."""
    extra = OfflineStore(tmp_path / "bootstrap")
    extra.append(OUTCOMES, [_row("a"), _row("z")], name="bootstrap")
    store = OfflineStore(tmp_path / "live", include=[tmp_path / "bootstrap"])
    store.append(OUTCOMES, [_row("a")], name="live")
    assert len(store.files(OUTCOMES)) == 2
    assert sorted(store.read(OUTCOMES).column("event_id").to_pylist()) == ["a", "z"]
    assert len(OfflineStore(tmp_path / "live").files(OUTCOMES)) == 1
