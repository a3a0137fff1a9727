"""Helpers shared by the serving, fuzz, security and soak tests: a uvicorn server in a thread,
raw HTTP requests (bytes exactly as given, no client-side URL normalisation) and a Python audit
hook recording which files and code a block of code touches."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator


@contextlib.contextmanager
def uvicorn_in_thread(app, **config) -> Iterator[str]:
    """Runs `app` with uvicorn (more `uvicorn.Config` arguments in `config`) in a thread on a
    free loopback port; yields its base URL and stops it on exit."""
    import uvicorn  # noqa: PLC0415

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # log_config=None: uvicorn would otherwise reconfigure logging and break pytest's caplog.
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raw_http(port: int, head: bytes, body: bytes = b"", timeout: float = 30.0) -> tuple[int, bytes]:
    """Sends `head` (request line and headers, without the blank line) and `body` verbatim on a
    new connection; returns the status code and the response body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Reads one HTTP/1.1 response (Content-Length framed, or until the server closes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        (
            int(v)
            for k, _, v in (h.partition(":") for h in lines[1:])
            if k.lower() == "content-length"
        ),
        None,
    )
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


# -- audit hook --------------------------------------------------------------------------------

_WATCHED = {
    "open",
    "os.listdir",
    "os.scandir",
    "pickle.find_class",
    "marshal.load",
    "marshal.loads",
    "exec",
    "compile",
    "import",
}
_events: list[tuple[str, tuple]] | None = None
_installed = False


def _hook(event: str, args: tuple) -> None:
    if _events is not None and event in _WATCHED:
        _events.append((event, args))


@contextlib.contextmanager
def audited() -> Iterator[list[tuple[str, tuple]]]:
    """Records Python audit events (file opens, directory listings, unpickling, code
    execution and imports) raised in any thread while the block runs.

    C++ reads (TensorFlow's own SavedModel and checkpoint readers) raise no audit event.
    """
    global _events, _installed
    if not _installed:  # an audit hook cannot be removed: install one, switched by `_events`
        sys.addaudithook(_hook)
        _installed = True
    _events = events = []
    try:
        yield events
    finally:
        _events = None


def event_path(event: str, args: tuple) -> str | None:
    """The file a recorded event refers to, when it names one."""
    if event in ("open", "os.listdir", "os.scandir") and args:
        path = args[0]
    elif event == "compile" and len(args) > 1:
        path = args[1]
    elif event == "exec" and args and hasattr(args[0], "co_filename"):
        path = args[0].co_filename
    elif event == "import" and len(args) > 1:
        path = args[1]
    else:
        return None
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    return path if isinstance(path, str) else None
