"""Running the server: `serve` binds the socket, runs uvicorn and drains on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from translator.errors import ConfigError
from translator.serving.app import create_app
from translator.serving.settings import ServeSettings

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
DRAIN_SECONDS = 30.0  # how long requests in flight may take to finish after SIGTERM/SIGINT
# uvicorn's HTTP parser and event loop; "auto": httptools and uvloop where installed (the
# `serve` extra installs both: less CPU per request, RESULTS.md), else h11 and asyncio.
HTTP_PARSERS = ("auto", "h11", "httptools")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def serve(
    directory: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    access_log: bool = False,
    drain_seconds: float = DRAIN_SECONDS,
    http: str = "auto",
    loop: str = "auto",
    **settings: Any,
) -> int:
    """Serves an export base directory until SIGTERM or SIGINT (see `translator.serving`).

    The port is bound before the model loads, so a taken port fails at once. On SIGTERM or
    SIGINT (Ctrl-C) the server stops accepting connections, lets the requests in flight finish
    (for at most `drain_seconds`; then they are cancelled) and returns 0; a second Ctrl-C stops
    without waiting.

    Args:
        directory: the export base directory, e.g. `saved_models/NAME`.
        host: interface to bind; loopback by default (nothing else can reach it).
        port: TCP port (0: any free port).
        access_log: log one line per request.
        drain_seconds: how long requests in flight may take to finish after a stop signal.
        http: uvicorn's HTTP parser (`HTTP_PARSERS`).
        loop: uvicorn's event loop (`EVENT_LOOPS`).
        **settings: `ServeSettings` fields.

    Raises:
        ConfigError: the address cannot be bound (port taken, unknown host), or `http`/`loop`
            names an unknown or uninstalled implementation.
        ModelDirError: the directory holds no loadable version.
    """
    import uvicorn  # noqa: PLC0415

    _check_choice("http", http, HTTP_PARSERS, "httptools")
    _check_choice("loop", loop, EVENT_LOOPS, "uvloop")
    sock = _bind(host, port)
    try:
        app = create_app(directory, ServeSettings(**settings))
        config = uvicorn.Config(
            app,
            access_log=access_log,
            log_level="info",
            # Log through the process's logging setup (the CLI's) instead of uvicorn's own
            # dictConfig, which would also close every handler already installed.
            log_config=None,
            timeout_graceful_shutdown=drain_seconds,
            http=http,
            loop=loop,
        )
        server = uvicorn.Server(config)
        received: list[int] = []
        with _record_stop_signals(received):
            server.run(sockets=[sock])
    finally:
        sock.close()
    if received:
        log.info("stopped by %s; requests in flight were answered", signal.strsignal(received[0]))
    return 0


def _check_choice(flag: str, value: str, choices: tuple[str, ...], module: str) -> None:
    """A one-line ConfigError for an unknown `--http`/`--loop` value, or for `module` asked
    for by name but not installed (uvicorn would fail later, with a traceback)."""
    if value not in choices:
        raise ConfigError(f"--{flag} must be one of {', '.join(choices)}, got {value!r}")
    if value == module and importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"--{flag} {module}: {module} is not installed (pip install 'translator[serve]')"
        )


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), ready for uvicorn to listen on."""
    if not 0 <= port <= 65535:  # getaddrinfo would silently take the port modulo 65536
        raise ConfigError(f"cannot listen on {host}:{port}: ports are 0 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@contextlib.contextmanager
def _record_stop_signals(received: list[int]):
    """Makes SIGTERM and SIGINT only be recorded in `received` while the server runs.

    uvicorn catches both to shut down gracefully, then re-raises the signal it caught into the
    handler that was installed before it started; with the default handlers that would kill the
    process by SIGTERM (or raise KeyboardInterrupt) after a clean drain instead of returning.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals go to the main thread only: nothing to do
        return
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda sig, frame: received.append(sig)) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
