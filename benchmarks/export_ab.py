"""The export against in-process translation, in one process: float32 and bfloat16.

Loads the model directory in process (`Translator.from_model_dir`) and its two exports
(`Translator.load`), then measures each in alternating rounds: greedy throughput on the test
sentences in one call, and the median latency of one-sentence calls. Also counts the
translations each export shares with its in-process twin.

    translator export --model DIR --output EXPORTS/f32 --precision float32
    translator export --model DIR --output EXPORTS/bf16 --precision bfloat16
    python benchmarks/export_ab.py --model-dir DIR --exports EXPORTS \\
        --source ../shared/corpora/multi30k/test_2016_flickr.de.gz

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from translator.api import Translator  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--exports", required=True, help="directory holding f32/ and bf16/")
    parser.add_argument("--source", required=True, help="source sentences, one per line (.gz)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single-calls", type=int, default=20, help="one-sentence calls a round")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    sources = common.read_lines(args.source)
    translators = {
        "inproc_float32": Translator.from_model_dir(args.model_dir, precision="float32"),
        "inproc_bf16": Translator.from_model_dir(args.model_dir, precision="bfloat16"),
        "export_float32": Translator.load(f"{args.exports}/f32"),
        "export_bf16": Translator.load(f"{args.exports}/bf16"),
    }
    for translator in translators.values():  # trace every batch shape path once
        translator.translate(sources[:64])
        translator.translate(sources[:1])
    batch_s = {k: [] for k in translators}
    single_ms = {k: [] for k in translators}
    outputs = {}
    for r in range(args.rounds):
        singles = sources[r * args.single_calls : (r + 1) * args.single_calls]
        for name, translator in translators.items():
            seconds, outputs[name] = common.timed(translator.translate, sources)
            batch_s[name].append(seconds)
            for sentence in singles:
                start = time.perf_counter()
                translator.translate([sentence])
                single_ms[name].append(1000 * (time.perf_counter() - start))
    result = {
        "machine": common.machine(),
        "sentences": len(sources),
        "results": {
            name: {
                "greedy_sent_per_s": round(len(sources) / common.median(batch_s[name]), 1),
                "rounds_s": [round(x, 2) for x in batch_s[name]],
                "one_sentence_p50_ms": round(common.median(single_ms[name]), 1),
            }
            for name in translators
        },
        "identical_to_in_process": {
            p: sum(
                a == b for a, b in zip(outputs[f"inproc_{p}"], outputs[f"export_{p}"], strict=True)
            )
            for p in ("float32", "bf16")
        },
    }
    common.write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
