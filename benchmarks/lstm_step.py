"""LSTM micro-benchmark: forward + backward of one LSTM layer, per loop variant, one process.

Variants (all with Keras's weights and a right-padded mask, lengths uniform in [time/2, time]):

- `keras`: `keras.layers.LSTM` (on CPU, Keras's generic RNN loop);
- `autodiff`: the input projection hoisted out of a `tf.while_loop`, weights cast once,
  gradients by autodiff through the loop (what a straightforward rewrite gives);
- `fast`: `translator.lstm.LSTM` (hoisted projection, weights cast once, hand-written backward
  loop, weight gradients as one matmul over all steps).

With `--models none,luong`, the same comparison also runs one forward + backward of the whole
reference model (`translator.model.Seq2Seq`, embeddings 256, encoder 256 per direction, decoder
512, vocabulary 8,000, dropout 0.3; batch `--model-batch` sentences, source and target of
`--model-time` pieces, right-padded), with `model.lstm` "keras" against "fast", per attention
kind; `--features luong` the same model without its vocabulary projection (encoder and decoder
LSTMs, attention), where the LSTM's share of the work is larger.

Every runner is built and warmed up first, then measured in interleaved rounds (round r runs
`--reps` steps of every runner in turn), so a load change on a shared machine hits all variants
of a round alike. Reported: per runner the median, min and max over rounds of the milliseconds
per forward + backward step, and per variant its median over rounds of the paired ratio to
`keras` at the same shape and precision (> 1: faster than Keras).

    python benchmarks/lstm_step.py --rounds 7

Prints one JSON object: machine (CPU flags included), settings, results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from translator.config import ModelConfig  # noqa: E402
from translator.lstm import LSTM, lstm_cell, project  # noqa: E402
from translator.model import build_model  # noqa: E402

VARIANTS = ("keras", "autodiff", "fast")
SHAPES = ("16x256x512", "30x256x512", "16x512x512", "30x512x512")  # time x features x units
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """The vector/matrix flags of this CPU that decide float32 vs bfloat16 speed."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return [f for f in CPU_FLAGS if f in flags]


class AutodiffLSTM(keras.layers.LSTM):
    """Hoisted input projection and weights cast once, autodiff through a `tf.while_loop`."""

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        kernel, recurrent, bias = (
            tf.cast(w, self.compute_dtype) for w in (cell.kernel, cell.recurrent_kernel, cell.bias)
        )
        x = tf.transpose(sequences, (1, 0, 2))  # [time, batch, features]
        keep = tf.transpose(mask)[:, :, None]  # [time, batch, 1]
        steps = x.shape[0]
        xz_ta = tf.TensorArray(x.dtype, size=steps).unstack(project(x, kernel))
        keep_ta = tf.TensorArray(tf.bool, size=steps).unstack(keep)
        h_ta = tf.TensorArray(x.dtype, size=steps)

        def body(t, h, c, h_ta):
            h_new, c_new = lstm_cell(xz_ta.read(t) + tf.matmul(h, recurrent) + bias, c)
            keep_t = keep_ta.read(t)
            h_new, c_new = tf.where(keep_t, h_new, h), tf.where(keep_t, c_new, c)
            return t + 1, h_new, c_new, h_ta.write(t, h_new)

        _, h, c, h_ta = tf.while_loop(
            lambda t, *_: t < steps, body, (tf.constant(0), *initial_state, h_ta)
        )
        hs = tf.where(keep, h_ta.stack(), tf.zeros((), x.dtype))
        return hs[-1], tf.transpose(hs, (1, 0, 2)), [h, c]


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (less sensitive to other load)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_runner(variant: str, shape: str, precision: str, batch: int, forward: bool = False):
    """A `tf.function` running forward + backward (`forward`: forward only, as in decoding's
    encoder) of one layer; returns the loss."""
    steps, features, units = (int(v) for v in shape.split("x"))
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    try:
        keras.utils.set_random_seed(0)
        kwargs = dict(return_sequences=True, zero_output_for_mask=True)
        if variant == "keras":
            layer = keras.layers.LSTM(units, **kwargs)
        elif variant == "autodiff":
            layer = AutodiffLSTM(units, **kwargs)
        else:
            layer = LSTM(units, kind="fast", **kwargs)
        layer.build((None, None, features))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(batch, steps, features)), layer.compute_dtype)
    mask = tf.sequence_mask(rng.integers(steps // 2, steps + 1, batch), steps)
    weight = tf.constant(rng.normal(size=(batch, steps, units)), "float32")

    @tf.function
    def run():
        if forward:
            return tf.reduce_sum(tf.cast(layer(x, mask=mask), "float32") * weight)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(layer(x, mask=mask), "float32") * weight)
        grads = tape.gradient(loss, [x] + layer.trainable_weights)
        return loss + sum(tf.reduce_sum(tf.cast(g, "float32")) * 0.0 for g in grads)

    return run


def make_model_runner(
    kind: str, attention: str, precision: str, batch: int, steps: int, features: bool = False
):
    """A `tf.function` running forward + backward of the reference model on a padded batch
    (`features`: without the vocabulary projection, whose cost does not depend on the LSTM)."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    try:
        keras.utils.set_random_seed(0)
        config = ModelConfig(units=256, attention=attention, dropout=0.3, lstm=kind)
        model = build_model(config, 8000, 8000)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(1)
    lengths = rng.integers(steps // 2, steps + 1, (2, batch))
    source, target = (
        tf.constant(rng.integers(4, 8000, (batch, steps)) * (np.arange(steps) < n[:, None]))
        for n in lengths
    )
    labels = tf.roll(target, -1, axis=1)
    weight = tf.constant(rng.normal(size=(batch, steps, 512)), "float32")

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            if features:
                state = model.encode(source, training=True)
                out, _ = model.decoder.features(target, state, training=True)
                loss = tf.reduce_sum(tf.cast(out, "float32") * weight)
            else:
                logits = model((source, target), training=True)
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                loss = tf.reduce_sum(losses * tf.cast(labels != 0, "float32"))
        grads = tape.gradient(loss, model.trainable_variables)  # None: the unused projection
        return loss + sum(
            tf.reduce_sum(tf.cast(g, "float32")) * 0.0 for g in grads if g is not None
        )

    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=3, help="steps per runner per round")
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="time x features x units")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--precisions", default="float32,bf16")
    parser.add_argument("--forward", action="store_true", help="layers: forward pass only")
    parser.add_argument("--models", default="", help="attention kinds, e.g. none,luong")
    parser.add_argument(
        "--features", default="", help="attention kinds: the model without its projection"
    )
    parser.add_argument("--model-batch", type=int, default=64)
    parser.add_argument("--model-time", type=int, default=16)
    parser.add_argument("--intra-threads", type=int, default=0, help="0: TensorFlow's default")
    parser.add_argument("--inter-threads", type=int, default=0, help="0: TensorFlow's default")
    args = parser.parse_args(argv)
    if args.intra_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_threads)
    if args.inter_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_threads)
    runners = {}
    for shape in args.shapes.split(","):
        for precision in args.precisions.split(","):
            for variant in args.variants.split(","):
                run = make_runner(variant, shape, precision, args.batch, args.forward)
                run()  # trace
                run()
                runners[(variant, shape, precision)] = run
    parts = [("model", a) for a in filter(None, args.models.split(","))]
    parts += [("features", a) for a in filter(None, args.features.split(","))]
    for part, attention in parts:
        for precision in args.precisions.split(","):
            for kind in ("keras", "fast"):
                run = make_model_runner(
                    kind,
                    attention,
                    precision,
                    args.model_batch,
                    args.model_time,
                    part == "features",
                )
                run()
                run()
                runners[(kind, f"{part}:{attention}", precision)] = run
    times: dict[tuple, list[float]] = {key: [] for key in runners}
    cpu_times: dict[tuple, list[float]] = {key: [] for key in runners}
    for _ in range(args.rounds):
        for key, run in runners.items():
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            for _ in range(args.reps):
                run().numpy()
            times[key].append((time.perf_counter() - start) / args.reps * 1000)
            cpu_times[key].append((_cpu_seconds() - cpu_start) / args.reps * 1000)
    results = []
    for (variant, shape, precision), ms in times.items():
        keras_ms = times.get(("keras", shape, precision))
        ratios = [k / m for k, m in zip(keras_ms, ms, strict=True)] if keras_ms else None
        results.append(
            {
                "variant": variant,
                "shape": shape,
                "precision": precision,
                "median_ms": round(statistics.median(ms), 1),
                "min_ms": round(min(ms), 1),
                "max_ms": round(max(ms), 1),
                "speedup_vs_keras": round(statistics.median(ratios), 2) if ratios else None,
                "cpu_ms": round(statistics.median(cpu_times[(variant, shape, precision)]), 1),
            }
        )
    report = {
        "machine": {**common.machine(), "cpu_flags": cpu_flags()},
        "settings": {
            **{k: v for k, v in vars(args).items()},
            "threads": [
                tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads(),
            ],
            "measure": "ms per forward + backward step (layers: forward only with --forward), "
            "batch-major input with a right-padded "
            "mask; median over rounds; speedup = median of per-round keras_ms / variant_ms; "
            "cpu_ms: median CPU time (all threads) per step",
        },
        "results": results,
    }
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
