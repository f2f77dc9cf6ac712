"""`signalops status` shows each polled source's breaker from ingest's /readyz body."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from infra import cli
from libs.common.net import free_port
from libs.common.settings import Settings

READY = {
    "status": "ready",
    "sources": {
        "plant_api": {
            "breaker": "open",
            "serving": "stale",
            "last_ok_at": "2026-12-03T07:00:00Z",
            "snapshot_age_s": 42.25,
        }
    },
}


class _Readyz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(READY).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(name="ingest_port")
def _ingest_port() -> Iterator[int]:
    """A stand-in ingest answering /readyz with one polled source down."""
    port = free_port()
    server = HTTPServer(("127.0.0.1", port), _Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()
    thread.join(5)


def test_status_lists_polled_sources_with_breaker_and_staleness(
    ingest_port: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The breaker state, what the source serves and its snapshot's age are printed."""
    monkeypatch.setenv("COLUMNS", "200")
    cli._print_polled_sources(Settings(ingest_port=ingest_port))
    out = capsys.readouterr().out
    assert "plant_api" in out and "open" in out and "stale" in out and "42.2" in out


def test_status_prints_nothing_when_ingest_is_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No ingest, no polled-source table (the component table already says it is down)."""
    cli._print_polled_sources(Settings(ingest_port=free_port()))
    assert capsys.readouterr().out == ""
