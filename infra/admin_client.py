"""The CLI's client of the admin endpoints of serve and ingest (admin scope).

Operator actions go through those endpoints (authenticated, logged, traced) instead
of writing to MLflow or Kafka from the operator's machine.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx

from libs.common.errors import SignalopsError
from libs.common.settings import Settings

Service = Literal["serve", "ingest"]


class AdminCallFailed(SignalopsError):
    """An admin endpoint refused the call, failed, or did not answer.

    Operator action: the message says which, and what to set or start.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def base_url(settings: Settings, service: Service) -> str:
    if service == "serve":
        return f"http://{settings.serve_host}:{settings.serve_port}"
    return f"http://{settings.ingest_host}:{settings.ingest_port}"


def admin_key(settings: Settings) -> str:
    """SIGNALOPS_API_KEY when set, else SIGNALOPS_ADMIN_TOKEN."""
    secret = settings.api_key if settings.api_key is not None else settings.admin_token
    return secret.get_secret_value()


def admin_call(
    settings: Settings,
    service: Service,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    params: dict[str, Any] | None = None,
    timeout_s: float = 60.0,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Call one admin endpoint with the configured key; its JSON answer. `params` are the
    query (None values left out).

    Raises:
        AdminCallFailed: unreachable, timed out, or answered >= 300 (the message
            carries the service's own message and, for 401/403, what to fix).
    """
    url = base_url(settings, service) + path
    try:
        with httpx.Client(timeout=timeout_s, transport=transport) as http:
            answer = http.request(
                method,
                url,
                json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers={"Authorization": f"Bearer {admin_key(settings)}"},
            )
    except httpx.ConnectError:
        raise AdminCallFailed(
            f"{service} does not answer at {base_url(settings, service)}; is the stack up? "
            "(`signalops status`)"
        ) from None
    except httpx.TimeoutException:
        raise AdminCallFailed(
            f"{service} did not answer {method} {path} within {timeout_s:.0f}s; the action may "
            "still complete: check before retrying"
        ) from None
    except httpx.HTTPError as exc:
        raise AdminCallFailed(f"{method} {url} failed: {exc!r}") from None
    if answer.status_code < 300:
        return dict(answer.json())
    raise AdminCallFailed(_refusal(service, answer), status=answer.status_code)


def _refusal(service: Service, answer: httpx.Response) -> str:
    try:
        doc = answer.json()
        code = doc.get("error", "")
        message = doc.get("message") or doc.get("detail") or answer.text[:300]
    except ValueError:
        code, message = "", answer.text[:300]
    text = f"{service} answered {answer.status_code}{f' {code}' if code else ''}: {message}"
    if answer.status_code == 401:
        text += "\nSet SIGNALOPS_API_KEY (or SIGNALOPS_ADMIN_TOKEN) to a key with the admin scope."
    elif answer.status_code == 403:
        text += "\nThe key is valid but lacks the admin scope; use a key that has it."
    return text
