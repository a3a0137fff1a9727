"""Inference side by side: float32 and bfloat16 exports of one model, in-process and served.

One run measures issue 19's table for each precision, on the same machine in the same sitting:

- the export: `export_model(--model-dir, OUT/<precision>, precision=...)` (reused when OUT
  already holds a version), with the bfloat16 gate's report (BLEU vs float32, identical share);
- in-process, `Translator.load(export)`: greedy and beam throughput on `--sentences` test
  sentences in one `translate` call (median over `--rounds`, the two interleaved), and the
  latency of one sentence per call (`--latency-sentences` calls, beam 1), with the BLEU of
  the greedy and beam outputs;
- served: `translator serve` on the export, driven by `serve_load`'s clients at each of
  `--clients` for greedy and beam, with each row's throughput as a fraction of the in-process
  figure of the same export measured above (`of_in_process`) and as a fraction of the same
  sentences translated in-process in file order `--max-batch-size` at a time, the most the
  server's batches could give (`of_server_batches`).

Example (the lead's quiet-machine run):

    python benchmarks/inference.py --model-dir /work/models/de_en_30min_stop15 \\
        --corpus-dir ../shared/corpora/multi30k --output /tmp/inference_exports \\
        --requests 2000 > inference.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import serve_load  # noqa: E402

from translator.api import Translator  # noqa: E402
from translator.config import load_config  # noqa: E402
from translator.evaluate import score  # noqa: E402
from translator.export import export_model, list_versions  # noqa: E402
from translator.export.layout import ASSETS_DIR, INFO_ASSET  # noqa: E402
from translator.model_dir import CONFIG_FILE  # noqa: E402


def read(path: Path, limit: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path) as f:
        return [line.rstrip("\n") for line in f][:limit]


def export(model_dir: str, base: Path, precision: str) -> dict:
    """The export of `model_dir` in `precision` under `base` (written unless present)."""
    started = time.perf_counter()
    if not list_versions(base):
        export_model(model_dir, base, precision=precision)
    seconds = round(time.perf_counter() - started, 1)
    version = base / str(list_versions(base)[-1])
    info = json.loads((version / ASSETS_DIR / INFO_ASSET).read_text(encoding="utf-8"))
    return {
        "path": str(version),
        "precision": info.get("precision", "float32"),
        "precision_check": info.get("precision_check", {}),
        "export_seconds": seconds,
    }


def measure_in_process(base: Path, sources, references, args) -> dict:
    """Throughput (greedy, beam) and single-sentence latency of the export, in-process."""
    translator = Translator.load(base)
    for beam in (1, args.beam_size):
        translator.translate(sources[:8], beam_size=beam)  # trace each graph once
    for text in sources[:3]:
        translator.translate([text], beam_size=1)
    times: dict[int, list[float]] = {1: [], args.beam_size: []}
    outputs = {}
    for _ in range(args.rounds):
        for beam in times:
            seconds, outputs[beam] = common.timed(translator.translate, sources, beam_size=beam)
            times[beam].append(seconds)
    latencies = []
    for text in sources[: args.latency_sentences]:
        latencies.append(common.timed(translator.translate, [text], beam_size=1)[0] * 1000)
    latencies.sort()
    rates = {beam: round(len(sources) / statistics.median(t), 2) for beam, t in times.items()}
    batch_rates = {
        beam: serve_load.in_server_batches(translator, sources, beam, args.max_batch_size)
        for beam in times
    }
    return {
        "sentences": len(sources),
        "sentences_per_s": {"greedy": rates[1], f"beam{args.beam_size}": rates[args.beam_size]},
        "per_round_seconds": {str(b): [round(x, 2) for x in t] for b, t in times.items()},
        "beam_over_greedy_time": round(rates[1] / rates[args.beam_size], 2),
        f"in_server_batches_of_{args.max_batch_size}": {
            "greedy": batch_rates[1],
            f"beam{args.beam_size}": batch_rates[args.beam_size],
        },
        "one_sentence_ms": {
            "calls": len(latencies),
            "p50": round(statistics.median(latencies), 2),
            "p95": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
        },
        "bleu": {
            "greedy": score(outputs[1], references)["bleu"],
            f"beam{args.beam_size}": score(outputs[args.beam_size], references)["bleu"],
        },
        "_rates": rates,
        "_batch_rates": batch_rates,
    }


def measure_served(base: Path, sources, rates: dict, batch_rates: dict, args) -> list[dict]:
    """serve_load's settings against `translator serve` on the export."""
    flags = ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    rows = []
    with serve_load.Server(str(base), flags) as server:
        for beam in (1, args.beam_size):
            for clients in args.clients:
                requests = max(args.requests // (8 if clients == 1 else 1), clients)
                row = serve_load.run_setting(server, sources, beam, clients, requests)
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    return serve_load.summarize(rows, rates, batch_rates)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a trained model directory")
    parser.add_argument("--corpus-dir", required=True, help="Multi30k-style files")
    parser.add_argument("--split", default="test_2016_flickr", help="test split file prefix")
    parser.add_argument("--output", required=True, help="where the two exports are written")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--sentences", type=int, default=1000, help="test sentences")
    parser.add_argument("--latency-sentences", type=int, default=100)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per served setting (1 client: /8)"
    )
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--no-serve", action="store_true", help="in-process figures only")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data = load_config(Path(args.model_dir) / CONFIG_FILE).data
    corpus = Path(args.corpus_dir)
    sources = read(common.corpus_file(corpus, args.split, data.source_lang), args.sentences)
    references = read(common.corpus_file(corpus, args.split, data.target_lang), args.sentences)
    report = {
        "benchmark": "inference",
        "machine": common.machine(),
        "model_dir": args.model_dir,
        "settings": {k: v for k, v in vars(args).items() if k not in ("model_dir",)},
        "exports": {},
    }
    for precision in args.precisions:
        entry = export(args.model_dir, Path(args.output) / precision, precision)
        print(json.dumps({precision: entry}), file=sys.stderr, flush=True)
        base = Path(args.output) / precision
        entry["in_process"] = measure_in_process(base, sources, references, args)
        rates = entry["in_process"].pop("_rates")
        batch_rates = entry["in_process"].pop("_batch_rates")
        print(json.dumps({precision: entry["in_process"]}), file=sys.stderr, flush=True)
        if not args.no_serve:
            entry["served"] = measure_served(base, sources, rates, batch_rates, args)
        report["exports"][precision] = entry
    if {"float32", "bfloat16"} <= set(report["exports"]):
        f32 = report["exports"]["float32"]["in_process"]["sentences_per_s"]
        b16 = report["exports"]["bfloat16"]["in_process"]["sentences_per_s"]
        report["bfloat16_over_float32"] = {k: round(b16[k] / f32[k], 2) for k in f32}
    report["machine_load_after"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
