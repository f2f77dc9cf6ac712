"""The auth header of a polled source, its value read from an env var or a secret file."""

from __future__ import annotations

from collections.abc import Mapping

from libs.common.definitions import SourceDefinition
from services.ingest.errors import PollSecretMissing


def auth_headers(source: SourceDefinition, environ: Mapping[str, str]) -> dict[str, str]:
    """The headers every poll of `source` sends (empty without `poll.auth`).

    The secret is read once, at start; it is never logged (errors name where it
    should be, never its value).

    Raises:
        PollSecretMissing: the variable is unset or empty, or the file is unreadable.
    """
    auth = source.poll.auth if source.poll else None
    if auth is None:
        return {}
    where = f"source {source.name!r}: poll.auth"
    if auth.env is not None:
        secret = environ.get(auth.env, "").strip()
        if not secret:
            raise PollSecretMissing(
                f"{where}.env names {auth.env!r}, which is unset or empty; export it"
            )
    else:
        assert auth.file is not None  # one of the two, by PollAuth's validator
        try:
            secret = auth.file.read_text().strip()
        except OSError as exc:
            raise PollSecretMissing(
                f"{where}.file {str(auth.file)!r} cannot be read ({exc.strerror}); mount it"
            ) from None
        if not secret:
            raise PollSecretMissing(f"{where}.file {str(auth.file)!r} is empty")
    value = f"{auth.scheme} {secret}" if auth.scheme else secret
    return {auth.header: value}
