"""Deploy the serve application onto a running Ray cluster, then exit.

`signalops up` starts the Ray head (with libs.common.ray_env.serve_ingress_env())
and runs `python -m services.serve.main` with SIGNALOPS_* variables.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import ray
from ray import serve
from ray.serve import Application

from libs.common.observability.logging import configure_logging, get_logger
from services.serve.app import SignalopsServe
from services.serve.settings import ServeSettings, settings_payload

APP_NAME = "signalops"
log = get_logger(__name__)


def build_app(settings: ServeSettings) -> Application:
    """The Serve application: the ingress deployment sized by `settings`.

    Args:
        settings: what the replicas run with (sent to them as a JSON dict).
    """
    # @serve.deployment turns the class into a Deployment, which mypy cannot see.
    return SignalopsServe.options(  # type: ignore[attr-defined]
        num_replicas=settings.serve_num_replicas,
        ray_actor_options={"num_cpus": settings.serve_num_cpus},
        max_ongoing_requests=settings.serve_max_ongoing_requests,
        # Old replicas keep serving until new ones are ready (RAY_NOTES.md "Hot swaps").
        max_surge_percent=100,
        graceful_shutdown_timeout_s=10,
    ).bind(settings_payload(settings))  # no secrets: replicas read them from their node


def app_builder(args: dict[str, Any]) -> Application:
    """Application builder for config deploys (`import_path: services.serve.main:app_builder`).

    `args` override settings; the rest come from SIGNALOPS_* variables in the
    application's runtime_env and the node. The admin token and the API keys are not
    put in the deployment arguments: replicas read them (SIGNALOPS_ADMIN_TOKEN,
    SIGNALOPS_API_KEYS or the file SIGNALOPS_API_KEYS_FILE names) on their node.
    """
    return build_app(ServeSettings(**args))


def wait_until_ready(settings: ServeSettings, timeout_s: float = 120.0) -> dict[str, object]:
    """Bounded wait for `GET /readyz` over HTTP to say ready; returns its body."""
    url = f"http://{settings.serve_host}:{settings.serve_port}/readyz"
    deadline = time.monotonic() + timeout_s
    last: object = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5.0)
            if r.status_code == 200:
                return dict(r.json())
            last = r.text[:500]
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise TimeoutError(f"serve not ready at {url} after {timeout_s:.0f}s: {last}")


def deploy(settings: ServeSettings, *, timeout_s: float = 120.0) -> dict[str, object]:
    """Connect to the cluster at `settings.ray_address`, (re)deploy, wait until ready.

    Redeploying replaces the application in place (same name), old replicas serving
    until the new ones are up. Returns the `/readyz` body.
    """
    if not ray.is_initialized():
        ray.init(address=settings.ray_address, log_to_driver=False)
    serve.start(http_options={"host": settings.serve_host, "port": settings.serve_port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    ready = wait_until_ready(settings, timeout_s)
    log.info(
        "serve_deployed", url=f"http://{settings.serve_host}:{settings.serve_port}", ready=ready
    )
    return ready


def main() -> None:
    settings = ServeSettings()
    configure_logging("serve-deploy", settings.log_level)
    deploy(settings)


if __name__ == "__main__":
    main()
