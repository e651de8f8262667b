"""uvicorn on a socket bound beforehand, the way the control plane and every replica serve:
binding first lets port 0 pick a free port and report it before the server runs."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (IPv6 when the host has a colon; port 0 picks a
    free one), not yet listening. Raises OSError naming the address when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"cannot listen on {host}:{port} ({exc.strerror}); pick another port"
        ) from exc
    return sock


def make_server(app: Any, *, keep_alive_s: float = 30.0) -> uvicorn.Server:
    """A quiet uvicorn server (no access log) for `app`, HTTP/1.1 keep-alive of `keep_alive_s`."""
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_keep_alive=int(keep_alive_s)
    )
    return uvicorn.Server(config)


def serve_in_thread(
    server: uvicorn.Server, sock: socket.socket, *, name: str, timeout_s: float = 30.0
) -> threading.Thread:
    """Run `server` on `sock` in a daemon thread; returns once it accepts connections.
    Raises RuntimeError (closing `sock`) when it did not start within `timeout_s`."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            sock.close()
            host, port = sock.getsockname()[:2]
            raise RuntimeError(f"the {name} server did not start on {host}:{port}")
        time.sleep(0.005)
    return thread
