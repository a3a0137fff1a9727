"""Where a training step's time goes: the TensorFlow profiler's op times, and the output kernels.

`profile` builds one variant of `train_throughput.py` (same spec syntax), warms it up, times
`--steps` steps without the profiler, then the same number under it, and sums the host op
events per op type and per op name (per step). `kernels` times the output layer's kernels
alone: the vocabulary matmul with and without its bias (fused by TensorFlow into one kernel when
the add follows the matmul), the label-smoothed loss with its gradient in three forms, and the
bias's gradient as autodiff's column sum and as `add_bias`'s matmul.

    python benchmarks/train_step_profile.py profile --corpus-dir ../shared/corpora/multi30k \\
        --model-dir runs/multi30k_de_en --variant "tied:bucket_width=RECIPE,\\
    batch_tokens=RECIPE,mixed_precision=true,model.lstm=fast,model.tie_embeddings=true"
    python benchmarks/train_step_profile.py kernels

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import tensorflow as tf  # noqa: E402
import train_throughput  # noqa: E402

from translator.config import config_from_dict, config_to_dict  # noqa: E402
from translator.lstm import add_bias  # noqa: E402
from translator.training.losses import smoothed_cross_entropy  # noqa: E402


def op_times(logdir: Path, steps: int, top: int) -> dict:
    """Milliseconds per step by op type and by op name, from the profiler's host plane."""
    by_type: dict[str, float] = collections.defaultdict(float)
    by_name: dict[str, float] = collections.defaultdict(float)
    for name, kind, seconds in common.profiler_op_events(logdir):
        if not name.startswith("StatefulPartitionedCall"):
            continue  # the executor's own events, the input pipeline
        by_type[kind] += 1000 * seconds / steps
        by_name[f"{kind} {name}"] += 1000 * seconds / steps

    def ranked(totals):
        return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda x: -x[1])[:top]}

    return {"ms_per_step_by_type": ranked(by_type), "ms_per_step_by_name": ranked(by_name)}


def profile(args: argparse.Namespace) -> dict:
    recipe = common.load_recipe(args)
    tokenizers, encoded = common.encoded_split(args, recipe, "train")
    base = config_to_dict(recipe)
    base["output_dir"] = "/tmp/bench_profile_unused"
    ((name, overrides),) = common.parse_variants(args.variant, recipe, cumulative=True)
    config = config_from_dict(common.with_overrides(base, overrides))
    runner = train_throughput.ProjectRunner(name, config, encoded, tokenizers)
    runner.warm_up(args.warmup)
    seconds, tokens = runner.run(args.steps)
    logdir = Path(tempfile.mkdtemp(prefix="train_profile_"))
    tf.profiler.experimental.start(str(logdir))
    profiled_seconds, profiled_tokens = runner.run(args.steps)
    tf.profiler.experimental.stop()
    return {
        "variant": name,
        "steps": args.steps,
        "target_tokens_per_s": round(tokens / seconds, 1),
        "seconds_per_step": round(seconds / args.steps, 3),
        "profiled_seconds_per_step": round(profiled_seconds / args.steps, 3),
        **op_times(logdir, args.steps, args.top),
    }


def _median_ms(fn, *inputs, calls: int = 7) -> float:
    result = fn(*inputs)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        result = fn(*inputs)
        tf.nest.map_structure(lambda t: t.numpy(), result)
        times.append(time.perf_counter() - start)
    return round(1000 * common.median(times), 1)


def kernels(args: argparse.Namespace) -> dict:
    rows, vocab, eps = args.rows, args.vocab, 0.1
    out: dict = {"rows": rows, "vocab": vocab, "matmul_ms": {}, "loss_and_gradient_ms": {}}
    for width in (256, 512):
        x = tf.cast(tf.random.normal([rows, width]), tf.bfloat16)
        w = tf.cast(tf.random.normal([width, vocab]), tf.bfloat16)
        bias = tf.zeros([vocab])
        forms = {
            "bf16 matmul": lambda x, w, b: tf.matmul(x, w),
            "bf16 matmul + bf16 bias (fused)": lambda x, w, b: (
                tf.matmul(x, w) + tf.cast(b, x.dtype)
            ),
            "bf16 matmul, float32 cast + bias": lambda x, w, b: (
                tf.cast(tf.matmul(x, w), tf.float32) + b
            ),
        }
        out["matmul_ms"][width] = {
            k: _median_ms(tf.function(f, autograph=False), x, w, bias) for k, f in forms.items()
        }
    logits = tf.random.normal([rows, vocab])
    labels = tf.random.uniform([rows], 0, vocab, tf.int32)

    def log_softmax_form(z, y):
        log_probs = tf.nn.log_softmax(z)
        nll = -tf.gather(log_probs, y[:, None], batch_dims=1)[:, 0]
        return (1 - eps) * nll - eps * tf.reduce_mean(log_probs, -1)

    def fused_form(z, y):
        q = tf.one_hot(y, vocab, on_value=1 - eps + eps / vocab, off_value=eps / vocab)
        return tf.nn.softmax_cross_entropy_with_logits(q, z)

    def written_out_form(z, y):  # the project's loss (translator.training.losses)
        return smoothed_cross_entropy(y, z, eps)

    forms = (
        ("log_softmax + gather", log_softmax_form),
        ("fused", fused_form),
        ("written out (smoothed_cross_entropy)", written_out_form),
    )
    for label, form in forms:

        def step(z, y, form=form):
            with tf.GradientTape() as tape:
                tape.watch(z)
                loss = tf.reduce_mean(form(z, y))
            return loss, tape.gradient(loss, z)

        fn = tf.function(step, autograph=False)
        out["loss_and_gradient_ms"][label] = _median_ms(fn, logits, labels)
    # the vocabulary bias's gradient from a [rows, vocab] float32 logits gradient
    bias = tf.zeros([vocab])
    for label, add in (("column sum (autodiff)", tf.add), ("matmul (add_bias)", add_bias)):

        def bias_grad(z, b, add=add):
            with tf.GradientTape() as tape:
                tape.watch(b)
                out_ = add(z, b)
            return tape.gradient(out_, b, output_gradients=z)

        fn = tf.function(bias_grad, autograph=False)
        out.setdefault("bias_gradient_ms", {})[label] = _median_ms(fn, logits, bias)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prof = sub.add_parser("profile", help="profile one train_throughput variant")
    common.add_data_args(prof)
    prof.add_argument("--variant", required=True, help="NAME:overrides, as in train_throughput")
    prof.add_argument("--steps", type=int, default=4)
    prof.add_argument("--warmup", type=int, default=3)
    prof.add_argument("--top", type=int, default=30, help="entries kept per table")
    kern = sub.add_parser("kernels", help="time the output layer's kernels alone")
    kern.add_argument("--rows", type=int, default=4096, help="target tokens")
    kern.add_argument("--vocab", type=int, default=8000)
    for p in (prof, kern):
        p.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    result = {"machine": common.machine()}
    result.update(profile(args) if args.command == "profile" else kernels(args))
    common.write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
