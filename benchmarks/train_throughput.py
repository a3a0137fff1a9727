"""Training throughput: the project's trainer against the Keras-tutorial baseline, one process.

Every runner (the baseline and each project variant) is built once, warmed up, then measured in
interleaved rounds: round r runs `--steps` steps of every runner in turn. Interleaving matters on
a shared machine: a load change hits all runners of a round alike, and the figure reported per
variant is the median over rounds of its paired ratio to the baseline of the same round.

Throughput counts real target tokens (EOS included, padding excluded) per second of steady-state
training. The project variants form a cumulative ablation: each adds one speed option to the
previous one, starting from length bucketing alone (float32, 64 sentences per batch).

Example (Multi30k de-en, the reference model of configs/multi30k_de_en.yaml):

    python benchmarks/train_throughput.py --corpus-dir ../shared/corpora/multi30k \\
        --model-dir runs/multi30k_de_en

Prints one JSON object: machine, settings, per-runner medians, ratios and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from baselines import keras_tutorial  # noqa: E402

from translator.config import Config, config_from_dict, config_to_dict  # noqa: E402
from translator.pipeline import EncodedCorpus, make_dataset  # noqa: E402
from translator.train import Trainer  # noqa: E402

# Cumulative ablation: name -> train.* overrides applied on top of the previous variant.
DEFAULT_VARIANTS = (
    "bucketing:bucket_width=8,batch_tokens=0,packed_loss=false,mixed_precision=false,"
    "jit_compile=false;"
    "+packed_loss:packed_loss=true;"
    "+batch_tokens:batch_tokens=RECIPE;"
    "+bucket_width_2:bucket_width=2;"
    "+bf16:mixed_precision=true"
)
# With --xla: XLA on fixed bucket shapes (width 8: one compile per bucket), float32 and bf16.
XLA_VARIANTS = (
    "xla_float32:from=+batch_tokens,jit_compile=true;"
    "xla_bf16:from=+batch_tokens,mixed_precision=true,jit_compile=true"
)


class BaselineRunner:
    """The tutorial model trained with `model.fit` on corpus-max-padded NumPy arrays."""

    def __init__(self, recipe: Config, encoded: EncodedCorpus, tokenizers, batch_size: int):
        self.name = "baseline_keras_tutorial"
        self.batch_size = batch_size
        keras.mixed_precision.set_global_policy("float32")
        keras.utils.set_random_seed(recipe.train.seed)
        arrays = keras_tutorial.pad_corpus(encoded.source.to_list(), encoded.target.to_list())
        order = np.random.default_rng(recipe.train.seed).permutation(len(arrays[0]))
        self.arrays = [a[order] for a in arrays]
        self.padded_shape = {"source": arrays[0].shape[1], "target": arrays[1].shape[1]}
        self.model = keras_tutorial.build_training_model(
            tokenizers.source_vocab_size,
            tokenizers.target_vocab_size,
            recipe.model.embedding_dim,
            recipe.model.units,
        )
        self.cursor = 0

    def run(self, steps: int) -> tuple[float, float]:
        """Fits `steps + 1` batches; times the last `steps` (batch-end to batch-end)."""
        rows = (steps + 1) * self.batch_size
        if self.cursor + rows > len(self.arrays[0]):
            self.cursor = 0
        enc, dec_in, dec_out = (a[self.cursor : self.cursor + rows] for a in self.arrays)
        self.cursor += rows
        ends: list[float] = []
        timer = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter())
        )
        self.model.fit(
            [enc, dec_in],
            dec_out,
            batch_size=self.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[timer],
        )
        tokens = float(np.count_nonzero(dec_out[self.batch_size :]))
        return ends[-1] - ends[0], tokens


def train_step(trainer: Trainer, batch) -> tuple[float, float]:
    """One step of the Trainer's own compiled train step: (global mean loss, target tokens)."""
    loss, tokens, _ = trainer._train_step(batch, tf.constant(0.0))
    return float(loss), float(tokens)


class ProjectRunner:
    """The project's Trainer train step on the project's bucketed tf.data pipeline."""

    def __init__(self, name: str, config: Config, encoded: EncodedCorpus, tokenizers):
        self.name = name
        self.config = config
        cfg = config.train
        # Layers take the global dtype policy when built; set it for this runner's model.
        keras.mixed_precision.set_global_policy(
            "mixed_bfloat16" if cfg.mixed_precision else "float32"
        )
        keras.utils.set_random_seed(cfg.seed)
        self.trainer = Trainer(config, progress=False)
        self.trainer._build(tokenizers)
        dataset = make_dataset(
            encoded,
            cfg.batch_size,
            cfg.batch_tokens,
            cfg.bucket_width,
            config.data.max_length,
            shuffle=True,
            seed=cfg.seed,
            shuffle_buffer=cfg.shuffle_buffer,
            fixed_shapes=cfg.jit_compile,
        )
        self.shapes = sorted({tuple(b[0].shape) + tuple(b[1].shape[1:]) for b in dataset})
        self.dataset = dataset
        self.batches = iter(dataset.repeat())
        keras.mixed_precision.set_global_policy("float32")

    def warm_up(self, steps: int) -> None:
        """Traces (and with XLA compiles) every batch shape of an epoch, then `steps` steps."""
        if self.config.train.jit_compile:
            seen = set()
            for batch in self.dataset:
                shape = tuple(batch[0].shape) + tuple(batch[1].shape)
                if shape not in seen:
                    seen.add(shape)
                    train_step(self.trainer, batch)
        for _ in range(steps):
            train_step(self.trainer, next(self.batches))

    def run(self, steps: int) -> tuple[float, float]:
        start, tokens = time.perf_counter(), 0.0
        for _ in range(steps):
            _, count = train_step(self.trainer, next(self.batches))
            tokens += count
        return time.perf_counter() - start, tokens


def isolated_peak_rss(args: argparse.Namespace, name: str) -> float:
    """Peak RSS (MiB) of a fresh process that builds and trains only runner `name`."""
    command = [sys.executable, os.path.abspath(__file__), "--corpus-dir", args.corpus_dir]
    command += ["--config", args.config, "--variants", args.variants, "--only", name]
    command += ["--xla"] if args.xla else []
    command += ["--rounds", "1", "--steps", str(args.steps), "--warmup", "1"]
    for override in args.set:
        command += ["--set", override]
    if args.model_dir:
        command += ["--model-dir", args.model_dir]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out)["process_peak_rss_mb"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_data_args(parser)
    parser.add_argument("--split", default="train", help="training split file prefix")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    parser.add_argument("--steps", type=int, default=6, help="measured steps per runner and round")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps per runner")
    parser.add_argument(
        "--baseline-batch-size", type=int, default=64, help="sentences per baseline batch"
    )
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="cumulative ablation spec")
    parser.add_argument(
        "--xla", action="store_true", help="also measure XLA variants (compiles per bucket shape)"
    )
    parser.add_argument("--only", help="build and measure only this runner (name)")
    parser.add_argument(
        "--isolated-memory",
        action="store_true",
        help="also measure each runner's peak RSS alone in a fresh process (slower)",
    )
    args = parser.parse_args(argv)

    recipe = common.load_recipe(args)
    started = time.perf_counter()
    tokenizers, encoded = common.encoded_split(args, recipe, args.split)

    runners: list = []
    if args.only in (None, "baseline_keras_tutorial"):
        runners.append(BaselineRunner(recipe, encoded, tokenizers, args.baseline_batch_size))
    base = config_to_dict(recipe)
    base["output_dir"] = "/tmp/bench_train_unused"  # the runners never write checkpoints
    spec = args.variants + (";" + XLA_VARIANTS if args.xla else "")
    for name, overrides in common.parse_variants(spec, recipe, cumulative=True):
        if args.only in (None, name):
            values = common.with_overrides(base, overrides)
            runners.append(ProjectRunner(name, config_from_dict(values), encoded, tokenizers))
    for runner in runners:
        if isinstance(runner, BaselineRunner):
            runner.run(args.warmup)
        else:
            runner.warm_up(args.warmup)

    rates = {r.name: [] for r in runners}
    for _ in range(args.rounds):
        for runner in runners:
            seconds, tokens = runner.run(args.steps)
            rates[runner.name].append(tokens / seconds)

    baseline = rates.get("baseline_keras_tutorial")
    results = {}
    for runner in runners:
        entry = {
            "target_tokens_per_s": round(common.median(rates[runner.name]), 1),
            "per_round": [round(x, 1) for x in rates[runner.name]],
        }
        if baseline and runner.name != "baseline_keras_tutorial":
            paired = [a / b for a, b in zip(rates[runner.name], baseline, strict=True)]
            entry["ratio_to_baseline"] = round(common.median(paired), 2)
        if isinstance(runner, ProjectRunner):
            entry["train"] = {
                k: getattr(runner.config.train, k)
                for k in (
                    "batch_size",
                    "batch_tokens",
                    "bucket_width",
                    "packed_loss",
                    "mixed_precision",
                    "jit_compile",
                )
            }
            entry["batch_shapes"] = len(runner.shapes)
        else:
            entry["padded_to"] = runner.padded_shape
            entry["batch_size"] = runner.batch_size
        results[runner.name] = entry
    if args.isolated_memory and args.only is None:
        for runner in runners:
            results[runner.name]["isolated_peak_rss_mb"] = round(
                isolated_peak_rss(args, runner.name), 1
            )

    report = {
        "benchmark": "train_throughput",
        "machine": common.machine(),
        "model": {
            **{k: getattr(recipe.model, k) for k in ("embedding_dim", "units", "attention")},
            "source_vocab": tokenizers.source_vocab_size,
            "target_vocab": tokenizers.target_vocab_size,
            "label_smoothing": recipe.train.label_smoothing,
            "dropout": recipe.model.dropout,
        },
        "corpus": {"pairs": len(encoded), "target_tokens_per_epoch": encoded.target_tokens},
        "settings": {k: getattr(args, k) for k in ("rounds", "steps", "warmup", "config", "set")},
        "results": results,
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
