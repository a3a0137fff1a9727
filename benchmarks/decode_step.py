"""Profile of one decoder step: where the time of a greedy decoding step goes.

Loads a trained model directory in a precision, encodes `--batch` test sentences and runs
`--steps` greedy decoding steps inside one `tf.function` (the search's callback, argmax fed
back), under the TensorFlow profiler. The profile's host events are summed by TensorFlow op
and grouped into the step's parts (embedding, LSTM matmuls, LSTM cell, attention, combine,
output projection, softmax and search, weight casts, loop bookkeeping). Relative shares are
what to read on a shared machine; the per-step time is the loop's wall time divided by steps.

`--callback decode_step` drives `Seq2Seq.decode_step` (the layers' own calls, one step at a
time: what the search ran before `Seq2Seq.search_step`); `--callback search_step` the search's
callback (weights cast once per call, fixed state outside the loop).

Example:

    python benchmarks/decode_step.py --model-dir /work/models/de_en_30min_stop15 \\
        --corpus-dir ../shared/corpora/multi30k --precision bfloat16 --callback search_step
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import tensorflow as tf  # noqa: E402

from translator.api import Translator  # noqa: E402
from translator.pipeline import prepare_source  # noqa: E402

# (part, substrings of a TensorFlow op's scoped name or its type), first match wins; both
# callbacks name their scopes so (Keras layer names, or `search_step`'s name scopes).
PARTS = (
    ("casts", ("Cast",)),
    ("softmax + search", ("LogSoftmax", "TopK", "ArgMax")),
    ("output projection", ("output",)),
    ("combine", ("combine",)),
    ("attention", ("attention",)),
    ("LSTM", ("cell_", "lstm")),
    ("embedding", ("embedding", "Gather")),
)


def part_of(name: str, kind: str) -> str:
    """The part of the step an op belongs to (see PARTS); the loop's own ops otherwise."""
    for part, keys in PARTS:
        if any(k == kind or k in name for k in keys):
            return part
    return "loop and other"


def profile_ops(logdir: Path) -> dict[tuple[str, str], tuple[float, int]]:
    """Seconds and calls per (op name, op type) of the decoding loop's body, from the
    profiler's host plane (the executor's threads)."""
    totals: dict[tuple[str, str], list] = collections.defaultdict(lambda: [0.0, 0])
    for name, kind, seconds in common.profiler_op_events(logdir):
        if not name.startswith("while/body"):
            continue  # the encoder, the set-up before the loop, the executor itself
        totals[(name, kind)][0] += seconds
        totals[(name, kind)][1] += 1
    return {k: (v[0], v[1]) for k, v in totals.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a trained model directory")
    parser.add_argument("--corpus-dir", required=True, help="Multi30k-style files")
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--precision", default="float32", help="auto, bfloat16 or float32")
    parser.add_argument("--callback", default="search_step", choices=("search_step", "decode_step"))
    parser.add_argument("--batch", type=int, default=64, help="sentences decoded together")
    parser.add_argument("--steps", type=int, default=40, help="decoding steps per run")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs (median)")
    parser.add_argument("--top", type=int, default=12, help="ops listed")
    args = parser.parse_args(argv)

    translator = Translator.from_model_dir(args.model_dir, precision=args.precision)
    model = translator.model
    lang = translator.config.data.source_lang
    with gzip.open(common.corpus_file(args.corpus_dir, args.split, lang), "rt") as handle:
        lines = [line.strip() for line in handle]
    texts = tf.constant(lines[: args.batch])
    source, _ = prepare_source(translator.tokenizers.source, texts, 256)

    @tf.function
    def run(source):
        state = model.encode(source)
        if args.callback == "search_step":
            step, state = model.search_step(state)
        else:
            step = model.decode_step
        tokens = tf.fill([tf.shape(source)[0]], 2)

        def body(t, tokens, state):
            log_probs, state = step(tokens, state)
            return t + 1, tf.argmax(log_probs, -1, output_type=tf.int32), state

        _, tokens, _ = tf.while_loop(
            lambda t, *_: t < args.steps, body, (tf.constant(0), tokens, state)
        )
        return tokens

    @tf.function
    def encode_only(source):
        return model.encode(source)

    run(source), encode_only(source)  # trace and warm up
    times, encode_times = [], []
    for _ in range(args.rounds):
        times.append(common.timed(lambda: run(source).numpy())[0])
        encode_times.append(
            common.timed(lambda: tf.nest.map_structure(lambda t: t.numpy(), encode_only(source)))[0]
        )
    step_ms = (common.median(times) - common.median(encode_times)) / args.steps * 1000

    logdir = Path(tempfile.mkdtemp(prefix="decode_step_profile_"))
    tf.profiler.experimental.start(str(logdir))
    run(source).numpy()
    tf.profiler.experimental.stop()
    ops = profile_ops(logdir)
    parts: dict[str, float] = collections.defaultdict(float)
    listed = []
    for (name, kind), (seconds, count) in ops.items():
        parts[part_of(name, kind)] += seconds
        listed.append((seconds, count, kind, name))
    total = sum(parts.values()) or 1.0
    listed.sort(reverse=True)
    report = {
        "benchmark": "decode_step",
        "machine": common.machine(),
        "model_dir": args.model_dir,
        "precision": args.precision,
        "compute_dtype": model.compute_dtype,
        "callback": args.callback,
        "batch": args.batch,
        "steps": args.steps,
        "ms_per_step": round(step_ms, 3),
        "loop_op_ms_per_step": round(sum(parts.values()) * 1000 / args.steps, 3),
        "share_of_loop_op_time": {
            k: round(v / total, 3) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
        },
        "top_ops": [
            {
                "op": kind,
                "name": name[-90:],
                "ms_per_step": round(s * 1000 / args.steps, 3),
                "calls": c,
            }
            for s, c, kind, name in listed[: args.top]
        ],
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
