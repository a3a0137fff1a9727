"""Serving load test: single-sentence latency and throughput against the real HTTP server.

Starts `translator serve EXPORT` in a subprocess (the server a user runs), then, for each beam
size and number of concurrent clients, sends `--requests` single-sentence `POST /v1/translate`
requests from asyncio clients (aiohttp by default, `--client httpx` too): each of the `c`
clients sends its next request as soon as its previous one is answered. Reported per setting:
latency p50/p95/mean (ms, from sending to the full response), throughput (sentences/s over the
setting's wall time), the server's dynamic batching (mean sentences per model call, from
/health, warm-up included) and the CPU milliseconds per request of the server process and of
the load generator (which shares the server's cores: what it spends, the server cannot).

With `--unbatched` the highest concurrency is also run against a second server started with
`--max-batch-size 1` (one sentence per model call), which shows what dynamic batching buys.

Before the server starts, the same export is measured in-process (`Translator.load(export)`,
all `--limit` sentences in one `translate` call per beam size, the median of
`--in-process-rounds`), and each row reports `of_in_process`: its throughput as a fraction of
that, so the figure holds on any machine. `of_server_batches` divides by the same export
translating the sentences in file order `--max-batch-size` at a time in-process: the most the
server's batches could give, so the rest of the gap is the HTTP path and the load generator.

Example:

    python benchmarks/serve_load.py --export /tmp/exports/m30k \\
        --sentences ../shared/corpora/multi30k/test_2016_flickr.de.gz --requests 200 --unbatched
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import httpx  # noqa: E402

# The load generator: aiohttp spent 0.26-0.31 CPU ms per request at 32 clients, httpx 1.3-1.5,
# and served 1.17-1.28x the sentences/s against the same server (AVX2 machine, RESULTS.md).
DEFAULT_CLIENT = "aiohttp"


def read_sentences(path: str, limit: int) -> list[str]:
    """The first `limit` non-empty lines of `path`, stripped."""
    return [line for line in common.read_lines(path) if line][:limit]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`translator serve` in a subprocess, stopped on exit."""

    def __init__(self, export: str, extra: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "translator", "serve", export, "--port", str(self.port)]
        self.proc = subprocess.Popen(command + extra, stdout=subprocess.DEVNULL)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit("server did not start within 300 s")
            try:
                httpx.get(self.url + "/health", timeout=2).raise_for_status()
                return self
            except httpx.HTTPError:
                time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)

    def batching(self, beam: int) -> dict:
        health = httpx.get(self.url + "/health", timeout=10).json()
        stats = health["batching"][str(max(health["versions"]))]
        # beam 1 goes to the greedy decoder, other beams to the exported beam decoder; the
        # server runs its decode function (`decode_<name>`, its batcher's name on /health).
        decoder = "greedy" if beam == 1 else "beam"
        empty = {"batches": 0, "sentences": 0, "largest": 0}
        return stats.get(f"decode_{decoder}", stats.get(decoder, empty))


class _Clients:
    """`clients` HTTP clients, each with its own keep-alive connection (a shared pool scans all
    its connections on every request, which would measure the client library, not the server):
    httpx (what the tests use) or aiohttp (C-accelerated parsing: less CPU per request, which
    matters when the load generator shares the server's cores)."""

    def __init__(self, kind: str, url: str, clients: int):
        self.kind = kind
        if kind == "httpx":
            self.sessions = [httpx.AsyncClient(base_url=url, timeout=300) for _ in range(clients)]
        elif kind == "aiohttp":
            import aiohttp  # noqa: PLC0415  (an optional load generator)

            self.sessions = [
                aiohttp.ClientSession(
                    base_url=url,
                    timeout=aiohttp.ClientTimeout(total=300),
                    connector=aiohttp.TCPConnector(limit=1),
                )
                for _ in range(clients)
            ]
        else:
            raise ValueError(f"unknown client {kind!r}: httpx or aiohttp")

    async def post(self, i: int, body: dict) -> None:
        if self.kind == "httpx":
            response = await self.sessions[i].post("/v1/translate", json=body)
            response.raise_for_status()
            return
        async with self.sessions[i].post("/v1/translate", json=body) as response:
            await response.read()
            response.raise_for_status()

    async def close(self) -> None:
        for session in self.sessions:
            await (session.aclose() if self.kind == "httpx" else session.close())


def process_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process `pid` so far (this process when None).

    On Linux, another process's CPU clock is read the way glibc's clock_getcpuclockid builds
    it (nanoseconds); /proc's tick counts (what psutil reads) move in 10 ms steps, too coarse
    for a short load. Elsewhere psutil."""
    if pid is None:
        return time.process_time()
    if sys.platform.startswith("linux"):
        return time.clock_gettime((~pid << 3) | 2)  # CPUCLOCK_SCHED of the whole process
    import psutil  # noqa: PLC0415  (a dev dependency)

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def load(
    url: str,
    sentences: list[str],
    beam: int,
    clients: int,
    requests: int,
    client: str = DEFAULT_CLIENT,
    server_pid: int | None = None,
) -> dict:
    """Warm-up (one request per client), then `requests` single-sentence requests from
    `clients` concurrent clients (`_Clients`). Besides latency and throughput, the CPU
    milliseconds per request of the load generator (this process) and, given `server_pid`, of
    the server: on a machine both share, what the generator spends the server cannot."""
    latencies: list[float] = []

    async def one_client(index: int, counter) -> None:
        for i in counter:
            body = {"text": [sentences[i % len(sentences)]], "beam_size": beam}
            start = time.perf_counter()
            await http.post(index, body)
            latencies.append(time.perf_counter() - start)

    http = _Clients(client, url, clients)
    try:
        warm_up = iter(range(clients))
        await asyncio.gather(*(one_client(c, warm_up) for c in range(clients)))
        latencies.clear()
        counter = iter(range(requests))
        generator_cpu = process_cpu_seconds()
        server_cpu = process_cpu_seconds(server_pid) if server_pid else 0.0
        start = time.perf_counter()
        await asyncio.gather(*(one_client(c, counter) for c in range(clients)))
        wall = time.perf_counter() - start
        generator_cpu = process_cpu_seconds() - generator_cpu
        if server_pid:
            server_cpu = process_cpu_seconds(server_pid) - server_cpu
    finally:
        await http.close()
    ms = sorted(x * 1000 for x in latencies)
    result = {
        "client": client,
        "requests": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "sentences_per_s": round(len(ms) / wall, 2),
        "seconds": round(wall, 1),
        "generator_cpu_ms_per_request": round(generator_cpu * 1000 / len(ms), 2),
    }
    if server_pid:
        result["server_cpu_ms_per_request"] = round(server_cpu * 1000 / len(ms), 2)
    return result


def run_setting(
    server: Server, sentences, beam: int, clients: int, requests: int, client=DEFAULT_CLIENT
) -> dict:
    before = server.batching(beam)
    result = asyncio.run(
        load(server.url, sentences, beam, clients, requests, client, server.proc.pid)
    )
    after = server.batching(beam)
    calls = after["batches"] - before["batches"]  # warm-up included
    result["mean_batch"] = round((after["sentences"] - before["sentences"]) / max(calls, 1), 2)
    return {"beam_size": beam, "clients": clients, **result}


def in_process(
    export: str, sentences: list[str], beams: list[int], rounds: int, batch: int
) -> tuple[dict, dict]:
    """Sentences/s of the export in this process, per beam size: all `sentences` in one
    `translate` call (the API's batching), median of `rounds` after one warm-up call; and
    `in_server_batches` with batches of `batch` (once per beam size)."""
    from translator.api import Translator  # noqa: PLC0415  (TensorFlow: only when measuring)

    translator = Translator.load(export)
    rates, batch_rates = {}, {}
    for beam in beams:
        translator.translate(sentences[:8], beam_size=beam)  # trace the graph
        times = [common.timed(translator.translate, sentences, beam_size=beam)[0]]
        times += [
            common.timed(translator.translate, sentences, beam_size=beam)[0]
            for _ in range(rounds - 1)
        ]
        rates[beam] = round(len(sentences) / statistics.median(times), 2)
        batch_rates[beam] = in_server_batches(translator, sentences, beam, batch)
    return rates, batch_rates


def in_server_batches(translator, sentences: list[str], beam: int, batch: int) -> float:
    """Sentences/s translating `sentences` in file order, `batch` per `translate` call: the
    most a server can serve when its batches hold at most `batch` sentences as they arrived
    (the one-call figure sorts all sentences by length into the API's batches)."""
    start = time.perf_counter()
    for i in range(0, len(sentences), batch):
        translator.translate(sentences[i : i + batch], beam_size=beam)
    return round(len(sentences) / (time.perf_counter() - start), 2)


def summarize(results: list[dict], in_process_rates: dict, batch_rates: dict | None = None):
    """`results` with `of_in_process`: served sentences/s over in-process sentences/s of the
    same beam size (None where that beam was not measured in-process), and, where
    `batch_rates` (`in_server_batches` per beam) is given, `of_server_batches`: over that."""

    def fraction(rates: dict, row: dict) -> float | None:
        beam = row["beam_size"]
        base = rates.get(beam) or rates.get(str(beam))
        return round(row["sentences_per_s"] / base, 3) if base else None

    rows = []
    for row in results:
        extra = {"of_in_process": fraction(in_process_rates, row)}
        if batch_rates is not None:
            extra["of_server_batches"] = fraction(batch_rates, row)
        rows.append({**row, **extra})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="export base directory")
    parser.add_argument(
        "--sentences", required=True, help="source sentences, one per line (.gz ok)"
    )
    parser.add_argument("--limit", type=int, default=1000, help="sentences read from the file")
    parser.add_argument("--requests", type=int, default=200, help="requests per setting")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument(
        "--in-process-rounds", type=int, default=3, help="rounds of the in-process measurement"
    )
    parser.add_argument(
        "--unbatched", action="store_true", help="also run the top concurrency unbatched"
    )
    parser.add_argument(
        "--client",
        nargs="+",
        default=[DEFAULT_CLIENT],
        choices=("aiohttp", "httpx"),
        help=f"load generator(s); each setting runs with each in turn (default {DEFAULT_CLIENT})",
    )
    parser.add_argument(
        "--server-args",
        default="",
        help='more `translator serve` flags, e.g. "--http h11 --loop asyncio"',
    )
    args = parser.parse_args()

    try:
        import sniffio  # noqa: F401
    except ImportError:
        print(
            "warning: sniffio is not installed: httpcore then retries importing it on every "
            "lock, which makes the client, not the server, the bottleneck",
            file=sys.stderr,
        )
    sentences = read_sentences(args.sentences, args.limit)
    batching = [
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-wait-ms",
        str(args.max_wait_ms),
        *args.server_args.split(),
    ]
    report = {
        "machine": common.machine(),
        "export": str(Path(args.export).resolve()),
        "sentences_file": args.sentences,
        "requests_per_setting": args.requests,
        "server": {
            "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms,
            "args": args.server_args,
        },
        "results": [],
    }
    rates, batch_rates = in_process(
        args.export, sentences, args.beams, args.in_process_rounds, args.max_batch_size
    )
    report["in_process_sentences_per_s"] = rates
    report["in_server_batches_sentences_per_s"] = batch_rates
    print(json.dumps({"in_process_sentences_per_s": rates}), file=sys.stderr, flush=True)
    with Server(args.export, batching) as server:
        for beam in args.beams:
            for clients in args.clients:
                for client in args.client:
                    row = run_setting(server, sentences, beam, clients, args.requests, client)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    report["results"].append(row)
    if args.unbatched:
        top = max(args.clients)
        with Server(args.export, ["--max-batch-size", "1", *args.server_args.split()]) as server:
            for beam in args.beams:
                row = run_setting(server, sentences, beam, top, args.requests, args.client[0])
                row["unbatched"] = True
                print(json.dumps(row), file=sys.stderr, flush=True)
                report["results"].append(row)
    report["results"] = summarize(report["results"], rates, batch_rates)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
