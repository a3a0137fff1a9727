"""benchmarks/serve_load.py: served throughput as a fraction of in-process throughput."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import httpx
import pytest
from fastapi import FastAPI, HTTPException
from hardening import uvicorn_in_thread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import serve_load  # noqa: E402


def test_summary_gives_each_row_its_fraction_of_in_process_throughput():
    rows = [
        {"beam_size": 1, "clients": 1, "sentences_per_s": 40.0},
        {"beam_size": 1, "clients": 32, "sentences_per_s": 270.0},
        {"beam_size": 5, "clients": 32, "sentences_per_s": 52.5},
        {"beam_size": 3, "clients": 32, "sentences_per_s": 10.0},
    ]
    summary = serve_load.summarize(rows, {1: 300.0, 5: 70.0})
    assert [r["of_in_process"] for r in summary] == [0.133, 0.9, 0.75, None]
    assert summary[1]["clients"] == 32 and rows[1].keys() <= summary[1].keys()
    # a report read back from JSON has string keys
    assert serve_load.summarize(rows[:1], {"1": 80.0})[0]["of_in_process"] == 0.5
    assert "of_server_batches" not in summary[0]


def test_summary_also_divides_by_the_server_sized_batches_when_given():
    rows = [{"beam_size": 1, "clients": 32, "sentences_per_s": 120.0}]
    row = serve_load.summarize(rows, {1: 300.0}, {1: 150.0})[0]
    assert (row["of_in_process"], row["of_server_batches"]) == (0.4, 0.8)


def test_server_sized_batches_translate_in_file_order_at_most_batch_at_a_time():
    calls = []

    class Recorder:
        def translate(self, texts, beam_size):
            calls.append((list(texts), beam_size))

    sentences = [f"s{i}" for i in range(7)]
    rate = serve_load.in_server_batches(Recorder(), sentences, beam=5, batch=3)
    assert calls == [(["s0", "s1", "s2"], 5), (["s3", "s4", "s5"], 5), (["s6"], 5)]
    assert rate > 0


@contextlib.contextmanager
def echo_server():
    """A loopback server whose /v1/translate echoes the sentences it gets (400 for beam 99)."""
    seen: list[str] = []
    app = FastAPI()

    @app.post("/v1/translate")
    async def translate(body: dict):
        if body["beam_size"] == 99:
            raise HTTPException(400, "no such beam")
        seen.extend(body["text"])
        return {"translations": [{"text": t} for t in body["text"]]}

    with uvicorn_in_thread(app) as url:
        yield url, seen


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
def test_load_sends_every_request_and_reports_cpu_per_request(client):
    sentences = ["a", "b", "c"]
    with echo_server() as (url, seen):
        result = asyncio.run(
            serve_load.load(url, sentences, 1, 4, 10, client=client, server_pid=os.getpid())
        )
        assert result["client"] == client and result["requests"] == 10
        assert len(seen) == 4 + 10  # one warm-up request per client, then the measured ones
        assert sorted(seen[4:]) == sorted(sentences[i % 3] for i in range(10))
        assert result["generator_cpu_ms_per_request"] > 0
        assert result["server_cpu_ms_per_request"] > 0  # here: this process, server included
        assert result["p50_ms"] > 0 and result["sentences_per_s"] > 0
        # a client's error is not a measurement: the load test fails
        with pytest.raises((httpx.HTTPStatusError, aiohttp.ClientResponseError)):
            asyncio.run(serve_load.load(url, sentences, 99, 2, 4, client=client))


def test_cpu_of_another_process_agrees_with_its_own_clock_to_the_millisecond():
    # /proc's tick counts move in 10 ms steps: a short load would read as 0 ms per request
    spin = (
        "import sys, time\n"
        "while time.process_time() < 0.15: pass\n"
        "print(time.process_time(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        own = float(child.stdout.readline())
        seen = serve_load.process_cpu_seconds(child.pid)
        assert own <= seen < own + 0.005  # only the print and the read ran in between
    finally:
        child.communicate("")
