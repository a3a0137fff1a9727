"""The server under load and at shutdown: nothing a client sent may be lost.

- A bounded soak (benchmarks/soak.py's driver): 2,000 requests from 32 concurrent clients,
  valid and invalid mixed; every valid one answered correctly, every mistake with its 4xx,
  and the server healthy afterwards. `python benchmarks/soak.py` runs the full measurement.
- Drain: on SIGTERM (`translator serve` in a subprocess) or SIGINT (`serve()` in this process)
  the requests already received are answered with 200, then the server exits with status 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from hardening import free_port
from test_serving import SETTINGS, running

from translator.serving import create_app, serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import soak  # noqa: E402

SENTENCES = ["da rosso hunto", "blu verde", "hunto da", "rosso", "verde da blu", "da da"]


@pytest.fixture(scope="module")
def export_base(tiny_export) -> Path:
    return tiny_export


def test_soak_of_mixed_requests_loses_nothing(export_base):
    limits = soak.Limits(
        model="tiny",
        max_body_bytes=SETTINGS.max_body_bytes,
        max_sentences=SETTINGS.max_sentences,
        max_chars=SETTINGS.max_chars,
    )
    with running(create_app(export_base, SETTINGS)) as client:
        report = asyncio.run(
            soak.soak(str(client.base_url), limits, 2000, 32, seed=1, server_pid=os.getpid())
        )
    summary = {k: report[k] for k in ("requests", "valid", "invalid", "seconds", "failures")}
    print("soak:", summary, "rss MiB (this process):", report["server_rss_mib"])
    assert report["requests"] == 2000 and report["valid"] > 1000 and report["invalid"] > 600
    assert len(report["by_kind"]) == 19  # every kind of request was sent
    assert report["failures"] == {}
    assert report["healthy_after"]
    # Server and clients share this process: only a gross leak would show (2,000 requests).
    assert report["server_rss_mib"]["drift"] < 200


def _post_all(url: str, results: list) -> list[threading.Thread]:
    """Sends one single-sentence request per sentence from threads; fills `results`."""

    def post(i: int) -> None:
        try:
            r = httpx.post(f"{url}/v1/translate", json={"text": [SENTENCES[i]]}, timeout=120)
            results[i] = (r.status_code, r.json()["translations"][0]["text"])
        except Exception as exc:  # recorded, so the test says what went wrong
            results[i] = (type(exc).__name__, str(exc))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(SENTENCES))]
    for thread in threads:
        thread.start()
    return threads


def _wait_until_queued(url: str, n: int, timeout: float = 60) -> None:
    """Waits until the server holds `n` sentences in its batching queue (so they are in
    flight, received but not yet answered)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = httpx.get(f"{url}/health", timeout=10).json()["batching"]
        if sum(s["queued"] for v in stats.values() for s in v.values()) >= n:
            return
        assert time.monotonic() < deadline, f"requests were not queued: {stats}"
        time.sleep(0.05)


def _wait_until_up(url: str, proc: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "server did not come up"
        try:
            httpx.get(f"{url}/health", timeout=5).raise_for_status()
            return
        except httpx.TransportError:
            time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_and_exits_0(export_base):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # A 2 s batching wait keeps the requests in flight long enough to signal in the middle.
    command = [sys.executable, "-m", "translator", "serve", str(export_base), "--port", str(port)]
    command += ["--max-wait-ms", "2000", "--max-batch-size", "64"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        _wait_until_up(url, proc)
        sockets = psutil.Process(proc.pid).net_connections("inet")
        listening = [c.laddr for c in sockets if c.status == "LISTEN"]
        assert [a.ip for a in listening] == ["127.0.0.1"] and listening[0].port == port
        reference = httpx.post(f"{url}/v1/translate", json={"text": SENTENCES}, timeout=60).json()
        results: list = [None] * len(SENTENCES)
        threads = _post_all(url, results)
        _wait_until_queued(url, len(SENTENCES))
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for thread in threads:
            thread.join(timeout=60)
        assert proc.wait(timeout=30) == 0
        exited = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    want = [(200, t["text"]) for t in reference["translations"]]
    assert results == want
    assert exited < 30
    assert "stopped by" in proc.stderr.read().decode()


def test_sigint_in_process_drains_and_returns_0(export_base):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    results: list = [None] * len(SENTENCES)
    threads: list[threading.Thread] = []
    failures: list[BaseException] = []

    def client() -> None:  # runs beside serve(), which needs the main thread for signals
        try:
            _wait_until_up(url)
            threads.extend(_post_all(url, results))
            _wait_until_queued(url, len(SENTENCES))
        except BaseException as exc:
            failures.append(exc)
        os.kill(os.getpid(), signal.SIGINT)
        if not stopped.wait(60):  # still not stopped after a minute: a second Ctrl-C forces it
            os.kill(os.getpid(), signal.SIGINT)

    stopped = threading.Event()
    threading.Thread(target=client, daemon=True).start()
    try:
        status = serve(export_base, port=port, max_wait_ms=2000, max_batch_size=64, poll_seconds=60)
    finally:
        stopped.set()  # a late second SIGINT would interrupt whatever test runs next
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    assert status == 0
    assert all(r is not None and r[0] == 200 for r in results), results
