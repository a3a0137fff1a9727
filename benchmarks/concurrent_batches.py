"""Concurrent model calls against one: what a server's batch threads could give.

TF Serving's batching has `num_batch_threads`: how many batches run at once. With C clients
each waiting for its answer, a server holds at most C sentences; it can run them as one batch
of C or as W concurrent batches of C / W (each in its own thread, sharing TensorFlow's thread
pools). This translates `--sentences` test sentences in-process, in file order (as they would
arrive), as W workers each taking the next `--batch` sentences until none are left, for each
`--layouts` entry `WxB`, alternating the layouts over `--rounds` (median), next to the one-call
figure (all sentences in one `translate` call: the API sorts them by length into batches of
the config's `decode.batch_size`). Every layout's translations are checked against the first's.

    python benchmarks/concurrent_batches.py --model /work/models/de_en_30_avx2 \\
        --source ../shared/corpora/multi30k/test_2016_flickr.de.gz --layouts 1x32,2x16,1x16,2x32
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from translator.api import Translator  # noqa: E402


def parse_layout(text: str) -> tuple[int, int]:
    """'2x16' -> (2 workers, 16 sentences per call)."""
    workers, _, batch = text.partition("x")
    if not (workers.isdigit() and batch.isdigit()) or int(workers) < 1 or int(batch) < 1:
        raise argparse.ArgumentTypeError(f"a layout is WORKERSxBATCH, e.g. 2x16, got {text!r}")
    return int(workers), int(batch)


def in_workers(translator, sentences: list[str], workers: int, batch: int, beam: int):
    """Translations of `sentences`, `workers` threads each translating the next `batch`."""
    starts: queue.SimpleQueue[int] = queue.SimpleQueue()
    for start in range(0, len(sentences), batch):
        starts.put(start)
    out: list[str | None] = [None] * len(sentences)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            while True:
                try:
                    start = starts.get_nowait()
                except queue.Empty:
                    return
                chunk = sentences[start : start + batch]
                out[start : start + len(chunk)] = translator.translate(chunk, beam_size=beam)
        except BaseException as exc:  # surfaced in the main thread below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model directory or an export")
    parser.add_argument("--source", required=True, help="source sentences, one per line (.gz ok)")
    parser.add_argument("--sentences", type=int, default=640)
    parser.add_argument(
        "--layouts",
        type=lambda s: [parse_layout(x) for x in s.split(",")],
        default=[(1, 32), (2, 16)],
        help="WORKERSxBATCH,... (default 1x32,2x16)",
    )
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)

    sentences = common.read_lines(args.source)[: args.sentences]
    translator = Translator.load(args.model)
    for _, batch in args.layouts:  # trace and warm up each batch shape once
        translator.translate(sentences[:batch], beam_size=args.beam)
    runs = {"one call": lambda: translator.translate(sentences, beam_size=args.beam)}
    for workers, batch in args.layouts:
        runs[f"{workers}x{batch}"] = lambda w=workers, b=batch: in_workers(
            translator, sentences, w, b, args.beam
        )
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            took, outputs[name] = common.timed(run)
            seconds[name].append(took)
    first = outputs[next(iter(runs))]
    result = {
        "benchmark": "concurrent_batches",
        "machine": common.machine(),
        "model": args.model,
        "sentences": len(sentences),
        "beam": args.beam,
        "rounds": args.rounds,
        "layouts": {
            name: {
                "sentences_per_s": round(len(sentences) / statistics.median(times), 1),
                "round_seconds": [round(t, 2) for t in times],
                "same_as_one_call": sum(a == b for a, b in zip(outputs[name], first, strict=True)),
            }
            for name, times in seconds.items()
        },
    }
    common.write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
