"""Small network facts the stack and the tests need: free ports, waiting for a port."""

from __future__ import annotations

import random
import socket
import time

# Ports handed out below the kernel's ephemeral range (32768-60999 on Linux) and
# above Ray's worker ports (10002-19999): a port picked from the ephemeral range
# can be taken by any outgoing connection before the server that wanted it binds
# (HAProxy's stats port was lost that way on a loaded machine).
_PICK_RANGE = (20000, 32767)
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, bindable on every interface, not handed out before."""
    for _ in range(200):
        port = random.randint(*_PICK_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                # 0.0.0.0 conflicts with any binding of the port, 127.0.0.1's included.
                s.bind(("0.0.0.0" if host == "127.0.0.1" else host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # a crowded range: the kernel's pick beats failing
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 30.0) -> None:
    """Bounded wait for a server to listen; raises TimeoutError naming the port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")
