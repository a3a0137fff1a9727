"""Soak test: many requests, valid and invalid mixed, against the real server; nothing may be lost.

Starts `translator serve EXPORT` in a subprocess (or uses `--url`), then `--clients` concurrent
clients send `--requests` requests in total, each client its next one as soon as the previous is
answered. The mix (fixed by `--seed`) is about 60% valid requests (`/v1/translate` with greedy or
the default decoding, TF Serving `:predict` row and columnar, `/health`, model status) and 40%
client mistakes (malformed JSON, invalid UTF-8, wrong types, unknown model or version, path
traversal, too many or too long sentences, an unavailable beam size, a body over the limit, a
wrong method).

Every response is checked: a valid request must get 200 with, for each sentence, exactly the
translation that sentence got alone before the soak; a mistake must get its 4xx status with a
JSON `{"error": ...}`. Reported: counts per kind of request, failures by kind (status,
wrong output, transport error), latency, and the server process's resident memory (RSS, via
psutil) after warm-up, at every tenth of the run, and at the end, with the server's health.

Example (the measurement in RESULTS.md):

    python benchmarks/soak.py --export /tmp/exports/tiny --requests 20000 --clients 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx  # noqa: E402
import psutil  # noqa: E402

BEAM = 5  # the beam signature's beam size (`translator export --beam-size`, default 5)
# Words of the tiny synthetic task (tests/synthetic.py) plus others: any text is valid input.
WORDS = "da rosso hunto blu verde gatto cane ein Hund läuft über die Wiese 😀 e\u0301 ש".split()


@dataclass(frozen=True)
class Limits:
    """The server's request limits (`translator serve` flags), needed to craft mistakes."""

    model: str
    max_body_bytes: int = 1 << 20
    max_sentences: int = 64
    max_chars: int = 1000


@dataclass
class Request:
    kind: str  # e.g. "translate", "bad_json"; "valid" kinds start with "ok_"
    method: str
    path: str
    status: int  # the expected status
    json: object = None
    content: bytes | None = None
    sentences: list[str] = field(default_factory=list)  # checked against the reference
    decoding: str = "default"  # which reference: "default", "greedy" or "beam"


def sentence_pool(seed: int, n: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 8))) for _ in range(n)] + ["", "   "]


def make_request(rng: random.Random, pool: list[str], limits: Limits) -> Request:
    """One request of the mix; `rng` decides which."""
    model = limits.model
    predict = f"/v1/models/{model}:predict"
    texts = rng.sample(pool, rng.randint(1, 4))
    roll = rng.random()
    if roll < 0.2:
        return Request("ok_translate", "POST", "/v1/translate", 200, {"text": texts}, None, texts)
    if roll < 0.3:
        body = {"text": texts, "beam_size": 1}
        return Request(
            "ok_translate_greedy", "POST", "/v1/translate", 200, body, None, texts, "greedy"
        )
    if roll < 0.35:
        body = {"text": texts, "beam_size": BEAM}
        return Request("ok_translate_beam", "POST", "/v1/translate", 200, body, None, texts, "beam")
    if roll < 0.45:
        return Request("ok_predict_row", "POST", predict, 200, {"instances": texts}, None, texts)
    if roll < 0.52:
        body = {"signature_name": "serving_default", "inputs": {"text": texts}}
        path = f"/v1/models/{model}/versions/1:predict"
        return Request("ok_predict_columnar", "POST", path, 200, body, None, texts)
    if roll < 0.56:
        return Request("ok_health", "GET", "/health", 200)
    if roll < 0.60:
        return Request("ok_status", "GET", f"/v1/models/{model}", 200)
    mistakes = [
        Request("bad_json", "POST", "/v1/translate", 400, None, b'{"text": ["a"'),
        Request("bad_utf8", "POST", predict, 400, None, b'{"instances": ["\xff\xfe"]}'),
        Request("bad_type", "POST", "/v1/translate", 400, {"text": "not a list"}),
        Request("bad_item", "POST", predict, 400, {"instances": [1, None]}),
        Request("bad_model", "POST", "/v1/models/nope:predict", 404, {"instances": ["a"]}),
        Request("bad_version", "GET", f"/v1/models/{model}/versions/99", 404),
        Request("traversal", "POST", "/v1/models/..%2F..%2Fetc%2Fpasswd:predict", 404, {}),
        Request(
            "too_many", "POST", "/v1/translate", 400, {"text": ["a"] * (limits.max_sentences + 1)}
        ),
        Request("too_long", "POST", predict, 400, {"instances": ["x" * (limits.max_chars + 1)]}),
        Request("bad_beam", "POST", "/v1/translate", 400, {"text": ["a"], "beam_size": 97}),
        Request(
            "too_large", "POST", "/v1/translate", 413, None, b" " * (limits.max_body_bytes + 1)
        ),
        Request("bad_method", "GET", "/v1/translate", 405),
    ]
    return rng.choice(mistakes)


def check(
    request: Request, response: httpx.Response, reference: dict[str, dict[str, str]]
) -> str | None:
    """None when the response is right, else what is wrong (a short reason)."""
    if response.status_code != request.status:
        return f"status {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return "not JSON"
    if request.status != 200:
        return None if isinstance(body, dict) and "error" in body else "no error field"
    want = [reference[request.decoding][s] for s in request.sentences]
    if request.kind.startswith("ok_translate"):
        got = [t["text"] for t in body["translations"]]
    elif request.kind == "ok_predict_row":
        got = [p["translation"] for p in body["predictions"]]
    elif request.kind == "ok_predict_columnar":
        got = body["outputs"]["translation"]
    else:
        return None if body else "empty body"
    return None if got == want else "wrong translation"


@dataclass
class Tally:
    sent: Counter = field(default_factory=Counter)  # kind -> requests sent
    failed: Counter = field(default_factory=Counter)  # "kind: reason" -> count
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        ms = sorted(x * 1000 for x in self.latencies) or [float("nan")]
        valid = sum(n for k, n in self.sent.items() if k.startswith("ok_"))
        failed_valid = sum(n for k, n in self.failed.items() if k.startswith("ok_"))
        return {
            "requests": sum(self.sent.values()),
            "valid": valid,
            "invalid": sum(self.sent.values()) - valid,
            "failed_valid": failed_valid,
            "failed_invalid": sum(self.failed.values()) - failed_valid,
            "by_kind": dict(sorted(self.sent.items())),
            "failures": dict(sorted(self.failed.items())),
            "latency_ms": {
                "p50": round(statistics.median(ms), 1),
                "p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
                "max": round(ms[-1], 1),
            },
        }


async def reference_translations(url: str, pool: list[str]) -> dict[str, dict[str, str]]:
    """Each pool sentence translated alone with the default decoding, greedy and the export's
    beam signature (`BEAM`): what the soak must return, whatever else shares the batch."""
    reference: dict[str, dict[str, str]] = {"default": {}, "greedy": {}, "beam": {}}
    options = {"default": {}, "greedy": {"beam_size": 1}, "beam": {"beam_size": BEAM}}
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for decoding, extra in options.items():
            for sentence in pool:
                r = await http.post("/v1/translate", json={"text": [sentence], **extra})
                if r.status_code != 200:
                    raise SystemExit(f"reference translation failed ({decoding}): {r.text}")
                reference[decoding][sentence] = r.json()["translations"][0]["text"]
    return reference


def rss_mib(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


async def soak(
    url: str,
    limits: Limits,
    requests: int,
    clients: int,
    seed: int = 0,
    server_pid: int | None = None,
    timeout: float = 120.0,
) -> dict:
    """Runs the soak against a running server; returns the report (see the module docstring)."""
    pool = sentence_pool(seed)
    reference = await reference_translations(url, pool)
    rng = random.Random(seed)
    plan = [make_request(rng, pool, limits) for _ in range(requests)]
    tally = Tally()
    memory: list[float] = []
    checkpoints = {requests * k // 10 for k in range(1, 10)}
    done = 0

    async def client(http: httpx.AsyncClient, queue: list[Request]) -> None:
        nonlocal done
        while queue:
            request = queue.pop()
            tally.sent[request.kind] += 1
            start = time.perf_counter()
            try:
                response = await http.request(
                    request.method, request.path, json=request.json, content=request.content
                )
                problem = check(request, response, reference)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            tally.latencies.append(time.perf_counter() - start)
            if problem:
                tally.failed[f"{request.kind}: {problem}"] += 1
            done += 1
            if server_pid and done in checkpoints:
                memory.append(rss_mib(server_pid))

    https = [httpx.AsyncClient(base_url=url, timeout=timeout) for _ in range(clients)]
    rss_before = rss_mib(server_pid) if server_pid else None
    start = time.perf_counter()
    try:
        queue = plan[::-1]
        await asyncio.gather(*(client(http, queue) for http in https))
    finally:
        for http in https:
            await http.aclose()
    seconds = time.perf_counter() - start
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        health = (await http.get("/health")).json()
        final = await http.post("/v1/translate", json={"text": pool[:4]})
        final_ok = final.status_code == 200 and [
            t["text"] for t in final.json()["translations"]
        ] == [reference["default"][s] for s in pool[:4]]
    report = {
        "clients": clients,
        "seconds": round(seconds, 1),
        "requests_per_s": round(requests / seconds, 1),
        **tally.summary(),
        "healthy_after": health.get("status") == "ok" and final_ok,
        "health_after": health,
    }
    if server_pid:
        rss_after = rss_mib(server_pid)
        report["server_rss_mib"] = {
            "before": rss_before,
            "after": rss_after,
            "drift": round(rss_after - rss_before, 1),
            "each_tenth": memory,
        }
    return report


def main() -> None:
    import common  # noqa: PLC0415
    from serve_load import Server  # noqa: PLC0415  (this directory is on sys.path)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="export base directory (served by a new subprocess)")
    parser.add_argument("--url", help="an already running server instead of --export")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id (for RSS)")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-body-bytes", type=int, default=16384, help="server body limit")
    args = parser.parse_args()
    if not (args.export or args.url):
        parser.error("give --export or --url")

    limits = Limits(
        model=os.path.basename(os.path.normpath(args.export or "")) or "model",
        max_body_bytes=args.max_body_bytes,
    )
    report = {"machine": common.machine(), "export": args.export, "url": args.url}
    if args.url:
        model = httpx.get(args.url + "/health").json()["model"]
        limits = Limits(model=model, max_body_bytes=args.max_body_bytes)
        result = asyncio.run(
            soak(args.url, limits, args.requests, args.clients, args.seed, args.pid)
        )
    else:
        with Server(args.export, ["--max-body-bytes", str(args.max_body_bytes)]) as server:
            result = asyncio.run(
                soak(server.url, limits, args.requests, args.clients, args.seed, server.proc.pid)
            )
            result["server_alive_after"] = server.proc.poll() is None
    report.update(result)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
