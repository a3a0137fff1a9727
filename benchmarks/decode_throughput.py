"""Decoding throughput: in-graph greedy and beam search against the tutorial's Python loop.

The project translates through `Translator.translate` (tokenization, batched encoding and a
`tf.while_loop` search, detokenization, all in one graph). The baseline is the Keras-tutorial
model with the same weights (copied from the project model) decoded one sentence and one token
at a time in Python (`benchmarks/baselines/keras_tutorial.py`). Both use the same maximum output
length rule, so with a trained model they produce (nearly) the same translations; the report
includes their BLEU and how many outputs agree exactly.

Rounds interleave the three measurements (greedy, beam, baseline); ratios are medians over
rounds of the per-round ratios. Sentences per second are over `--sentences` test sentences
(default all); the baseline loop runs on the first `--baseline-sentences` of them.

Example:

    python benchmarks/decode_throughput.py --corpus-dir ../shared/corpora/multi30k \\
        --model-dir runs/multi30k_de_en

Without a checkpoint in `--model-dir` the weights are random: every output then runs to its
maximum length, which measures the worst case but not realistic lengths (reported as such).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from baselines import keras_tutorial  # noqa: E402

from translator.api import LENGTH_MARGIN, Translator  # noqa: E402
from translator.evaluate import score  # noqa: E402
from translator.model import build_model  # noqa: E402
from translator.model_dir import CHECKPOINT_DIR  # noqa: E402


def load_translator(args: argparse.Namespace, recipe) -> tuple[Translator, str]:
    """The trained model of `--model-dir`, or a randomly initialised recipe model."""
    if args.model_dir and tf.train.latest_checkpoint(str(Path(args.model_dir) / CHECKPOINT_DIR)):
        return Translator.from_model_dir(args.model_dir, checkpoint=args.checkpoint), "trained"
    train = common.read_split(args, recipe, "train")
    tokenizers = common.tokenizers_for(args, recipe, train)
    keras.utils.set_random_seed(recipe.train.seed)
    model = build_model(recipe.model, tokenizers.source_vocab_size, tokenizers.target_vocab_size)
    return Translator(model, tokenizers, recipe), "random"


def baseline_inputs(translator: Translator, sources: list[str]) -> tuple[list, list]:
    """Source ids (truncated as the project truncates) and per-sentence output limits."""
    decode = translator.config.decode
    ids = translator.tokenizers.source.tokenize(tf.constant(sources)).to_list()
    ids = [row[: decode.max_source_length] for row in ids]
    limits = [
        min(math.ceil(decode.max_length_ratio * len(row)) + LENGTH_MARGIN, decode.max_length)
        for row in ids
    ]
    return ids, limits


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_data_args(parser)
    parser.add_argument("--split", default="test_2016_flickr", help="test split file prefix")
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument("--sentences", type=int, default=0, help="test sentences (0 = all)")
    parser.add_argument(
        "--baseline-sentences", type=int, default=100, help="sentences the baseline loop decodes"
    )
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    recipe = common.load_recipe(args)
    test = common.read_split(args, recipe, args.split)
    n = args.sentences or len(test)
    sources, references = test.sources[:n], test.targets[:n]
    m = min(args.baseline_sentences or n, n)

    keras.mixed_precision.set_global_policy("float32")
    translator, weights = load_translator(args, recipe)
    tutorial = keras_tutorial.build_training_model(
        translator.tokenizers.source_vocab_size,
        translator.tokenizers.target_vocab_size,
        translator.model.embedding_dim,
        translator.model.units,
    )
    keras_tutorial.copy_weights(translator.model, tutorial)
    encoder, decoder = keras_tutorial.build_inference_models(tutorial)
    ids, limits = baseline_inputs(translator, sources[:m])

    def greedy():
        return translator.translate(sources, beam_size=1)

    def beam():
        return translator.translate(sources, beam_size=args.beam_size)

    def loop():
        return keras_tutorial.greedy_translate(encoder, decoder, ids, limits)

    # Warm-up: trace both search graphs and the tutorial models' eager call paths.
    translator.translate(sources[:8], beam_size=1)
    translator.translate(sources[:8], beam_size=args.beam_size)
    keras_tutorial.greedy_translate(encoder, decoder, ids[:2], limits[:2])

    times: dict[str, list[float]] = {"greedy": [], "beam": [], "baseline": []}
    outputs: dict = {}
    for _ in range(args.rounds):
        for name, fn in (("greedy", greedy), ("beam", beam), ("baseline", loop)):
            seconds, outputs[name] = common.timed(fn)
            times[name].append(seconds)
    rate = {
        "greedy": [n / t for t in times["greedy"]],
        "beam": [n / t for t in times["beam"]],
        "baseline": [m / t for t in times["baseline"]],
    }
    ratio_greedy = [g / b for g, b in zip(rate["greedy"], rate["baseline"], strict=True)]
    ratio_beam = [g / b for g, b in zip(rate["greedy"], rate["beam"], strict=True)]

    flat = [token for row in outputs["baseline"] for token in row]
    lengths = [len(row) for row in outputs["baseline"]]
    ragged = tf.RaggedTensor.from_row_lengths(tf.constant(flat, tf.int32), lengths)
    detokenized = translator.tokenizers.target.detokenize(ragged).numpy()
    baseline_text = [text.decode("utf-8") for text in detokenized]
    agree = sum(a == b for a, b in zip(baseline_text, outputs["greedy"][:m], strict=True))
    report = {
        "benchmark": "decode_throughput",
        "machine": common.machine(),
        "weights": weights,
        "model_dir": args.model_dir,
        "sentences": n,
        "baseline_sentences": m,
        "decode": {
            "batch_size": translator.config.decode.batch_size,
            "beam_size": args.beam_size,
            "length_penalty": translator.config.decode.length_penalty,
            "max_length_ratio": translator.config.decode.max_length_ratio,
        },
        "sentences_per_s": {k: round(common.median(v), 2) for k, v in rate.items()},
        "per_round": {k: [round(x, 2) for x in v] for k, v in rate.items()},
        "greedy_over_baseline": round(common.median(ratio_greedy), 2),
        "greedy_over_beam": round(common.median(ratio_beam), 2),
        "bleu": {
            "greedy": score(outputs["greedy"], references)["bleu"],
            f"beam{args.beam_size}": score(outputs["beam"], references)["bleu"],
            "greedy_first_m": score(outputs["greedy"][:m], references[:m])["bleu"],
            "baseline_first_m": score(baseline_text, references[:m])["bleu"],
        },
        "baseline_agrees_with_greedy": round(agree / m, 3),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
