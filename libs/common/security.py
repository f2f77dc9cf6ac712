"""API keys with scopes at the HTTP edge of serve and ingest (issue 8, item 8).

Keys come from `SIGNALOPS_API_KEYS` (JSON), a secrets file `SIGNALOPS_API_KEYS_FILE`
(YAML or JSON, e.g. a mounted Kubernetes Secret), and `SIGNALOPS_ADMIN_TOKEN`, which
stays valid as the key named "admin" with every scope. A presented key is hashed and
compared with every known key's digest in constant time, so neither the answer time
nor an early exit tells which key (or how much of one) matched. Keys are never logged:
callers log the key's name.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from libs.common.errors import SignalopsError
from libs.common.settings import ApiKeyConfig, Scope, Settings

ADMIN_KEY_NAME = "admin"  # SIGNALOPS_ADMIN_TOKEN's name in logs and rate limits
ALL_SCOPES: frozenset[Scope] = frozenset({"predict", "admin"})

_KEYS = TypeAdapter(dict[str, ApiKeyConfig])


class SecurityError(SignalopsError):
    """Base of the edge's refusals; `status` and `code` are the HTTP answer."""

    status = 401
    code = "unauthorized"


class Unauthenticated(SecurityError):
    """No key, or a key nobody configured: 401 with WWW-Authenticate."""


class ScopeMissing(SecurityError):
    """A known key without the scope the endpoint needs: 403."""

    status = 403
    code = "forbidden"


class KeysFileInvalid(SignalopsError):
    """The API keys file cannot be read or does not hold {name: {key, scopes, ...}}.

    Operator action: fix the file named in the message (or SIGNALOPS_API_KEYS_FILE).
    """


@dataclass(frozen=True)
class Principal:
    """Who called: the key's name (safe to log), its scopes and its rate limit."""

    name: str
    scopes: frozenset[Scope]
    rate_per_s: float | None = None
    burst: int | None = None

    def can(self, scope: Scope) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    principal: Principal


def _digest(secret: str | bytes) -> bytes:
    raw = secret.encode("utf-8", "surrogatepass") if isinstance(secret, str) else secret
    return hashlib.sha256(raw).digest()


def read_keys_file(path: Path) -> dict[str, ApiKeyConfig]:
    """The keys of a YAML or JSON file (JSON is YAML); clear errors name the file."""
    try:
        data: Any = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KeysFileInvalid(f"API keys file {path}: cannot read it: {exc}") from None
    try:
        return _KEYS.validate_python(data)
    except ValidationError as exc:
        raise KeysFileInvalid(
            f"API keys file {path}: expected {{name: {{key, scopes, rate_per_s, burst}}}}: "
            f"{exc.error_count()} errors, first: {exc.errors()[0]['msg']} at "
            f"{'.'.join(str(p) for p in exc.errors()[0]['loc'])}"
        ) from None


class KeyRing:
    """The known keys, by sha256 digest; answers who presented a key, in constant time."""

    def __init__(self, principals: Iterable[tuple[str, Principal]]) -> None:
        self._entries = [_Entry(_digest(secret), p) for secret, p in principals]
        seen: dict[bytes, str] = {}
        for e in self._entries:
            if e.digest in seen:
                raise KeysFileInvalid(
                    f"API keys {seen[e.digest]!r} and {e.principal.name!r} share one secret"
                )
            seen[e.digest] = e.principal.name

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """SIGNALOPS_ADMIN_TOKEN (as "admin", every scope), SIGNALOPS_API_KEYS, the file.

        Raises:
            KeysFileInvalid: the file is unreadable or malformed, or a name or secret
                is configured twice.
        """
        keys: dict[str, ApiKeyConfig] = dict(settings.api_keys)
        if settings.api_keys_file is not None:
            from_file = read_keys_file(settings.api_keys_file)
            twice = sorted(set(keys) & set(from_file))
            if twice:
                raise KeysFileInvalid(
                    f"API keys {twice} are in both SIGNALOPS_API_KEYS and "
                    f"{settings.api_keys_file}; keep each name in one place"
                )
            keys.update(from_file)
        if ADMIN_KEY_NAME in keys:
            raise KeysFileInvalid(
                f"the key name {ADMIN_KEY_NAME!r} is reserved for SIGNALOPS_ADMIN_TOKEN"
            )
        return cls(
            [
                (settings.admin_token.get_secret_value(), Principal(ADMIN_KEY_NAME, ALL_SCOPES)),
                *(
                    (
                        c.key.get_secret_value(),
                        Principal(name, frozenset(c.scopes), c.rate_per_s, c.burst),
                    )
                    for name, c in keys.items()
                ),
            ]
        )

    @property
    def names(self) -> list[str]:
        return [e.principal.name for e in self._entries]

    def identify(self, presented: str) -> Principal | None:
        """The principal whose key is `presented`, or None.

        Every known digest is compared (no early exit), each with compare_digest.
        """
        digest = _digest(presented)
        found: Principal | None = None
        for e in self._entries:
            if hmac.compare_digest(digest, e.digest):
                found = e.principal
        return found

    def authenticate(self, headers: Mapping[str, str], scope: Scope) -> Principal:
        """The caller of a request that needs `scope`.

        Raises:
            Unauthenticated: no key in the headers, or an unknown key.
            ScopeMissing: the key is known but lacks `scope`.
        """
        principal = self.caller(headers)
        if principal is None:
            raise Unauthenticated(
                f"this endpoint needs an API key with the {scope!r} scope: send "
                "'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        return require(principal, scope)

    def caller(self, headers: Mapping[str, str]) -> Principal | None:
        """The principal of the key in the headers; None when none is presented.

        Raises:
            Unauthenticated: a key is presented that nobody configured.
        """
        presented = presented_key(headers)
        if presented is None:
            return None
        principal = self.identify(presented)
        if principal is None:
            raise Unauthenticated("the API key is not valid (unknown or revoked)")
        return principal


def require(principal: Principal, scope: Scope) -> Principal:
    """`principal` if it holds `scope`, else ScopeMissing naming the key and scope."""
    if not principal.can(scope):
        raise ScopeMissing(
            f"the API key {principal.name!r} lacks the {scope!r} scope "
            f"(it has {sorted(principal.scopes)})"
        )
    return principal


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in `Authorization: Bearer <key>` or `X-API-Key: <key>`, else None.

    `headers` is case-insensitive (Starlette's Headers) or has lowercase names. An
    Authorization header of another scheme, or an empty bearer, counts as no key.
    """
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("x-api-key")
    if api_key and api_key.strip():
        return api_key.strip()
    return None
