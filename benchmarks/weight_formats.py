"""Fewer bytes per decoder step: float32, stored bfloat16 and int8 weights at a few rows.

At one row a float32 decoder step reads every weight once and does little else (RESULTS.md:
"One sentence on AVX2"), so a smaller weight format is the one way to a faster step. This
times, for each of the step's weight shapes (defaults: the 30-minute de→en recipe's LSTM input
and recurrent kernels, the attention combination and the tied output matrix) and row count,
100 products `x @ W` inside one `tf.while_loop`, each product's input depending on the last's
output (so none is hoisted or shared), median of `--repeats`, the formats alternated over
`--rounds`:

- `float32`: `tf.matmul` of float32 `x` and `W` (what the search runs on a CPU without bf16);
- `bfloat16`: `W` stored in bfloat16, `x` cast to it and the product back to float32 (what a
  bfloat16 export runs);
- `int8`: `W` stored as quint8 (`tf.quantization.quantize`, MIN_FIRST), `x` quantized to quint8
  per product, `tf.raw_ops.QuantizedMatMul` to qint32, dequantized to float32: TensorFlow's own
  int8 product.

    python benchmarks/weight_formats.py --rows 1,32 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import tensorflow as tf  # noqa: E402

RANGE = 4.0  # the quantization range of x (its values are standard normal)


def formats(w: tf.Tensor) -> dict:
    """The product `x @ w` in each format, with `w` converted once, outside the timed loop."""
    w16 = tf.cast(w, tf.bfloat16)
    limit = float(tf.reduce_max(tf.abs(w)))
    w8 = tf.quantization.quantize(w, -limit, limit, tf.quint8, mode="MIN_FIRST")
    # A loop passes what its body captures through each iteration, and TensorFlow has no
    # loop kernel for quint8 tensors: the weights ride as uint8 and are reinterpreted inside.
    w8_bytes = tf.bitcast(w8.output, tf.uint8)

    def int8(x):
        x8 = tf.quantization.quantize(x, -RANGE, RANGE, tf.quint8, mode="MIN_FIRST")
        y, low, high = tf.raw_ops.QuantizedMatMul(
            a=x8.output,
            b=tf.bitcast(w8_bytes, tf.quint8),
            min_a=x8.output_min,
            max_a=x8.output_max,
            min_b=w8.output_min,
            max_b=w8.output_max,
            Toutput=tf.qint32,
        )
        return tf.quantization.dequantize(y, low, high, mode="MIN_FIRST")

    return {
        "float32": lambda x: tf.matmul(x, w),
        "bfloat16": lambda x: tf.cast(tf.matmul(tf.cast(x, tf.bfloat16), w16), tf.float32),
        "int8": int8,
    }


def time_product(multiply, x: tf.Tensor, repeats: int) -> float:
    """Milliseconds per product: the median over `repeats` of 100 chained products."""

    @tf.function(autograph=False)
    def run(x):
        def body(i, x):
            y = multiply(x)
            return i + 1, x + 1e-12 * tf.reduce_sum(y[:1, :1])  # the next input needs y

        return tf.while_loop(lambda i, _: i < 100, body, (0, x))[1]

    return common.ms_per_iteration(run, x, repeats, 100)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes",
        default="lstm_input=768x2048,lstm_recurrent=512x2048,combine=1024x512,output=256x8000",
        help="name=in x out, comma-separated",
    )
    parser.add_argument("--rows", default="1,32", help="row counts (sentences x beam)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the formats")
    parser.add_argument("--repeats", type=int, default=5, help="timed loops per measurement")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    shapes = common.parse_shapes(args.shapes)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        for name, (n_in, n_out) in shapes.items():
            products = formats(tf.random.stateless_normal([n_in, n_out], (1, 2)) * 0.05)
            x = tf.random.stateless_normal([rows, n_in], (3, 4))
            times = {kind: [] for kind in products}
            for _ in range(args.rounds):
                for kind, multiply in products.items():
                    times[kind].append(time_product(multiply, x, args.repeats))
            ms = {kind: round(common.median(t), 4) for kind, t in times.items()}
            row = {"rows": rows, "weight": name, "in": n_in, "out": n_out, "ms": ms}
            row["float32_over"] = {k: round(ms["float32"] / v, 2) for k, v in ms.items()}
            results.append(row)
            print(rows, name, ms, file=sys.stderr)
    result = {
        "benchmark": "weight_formats",
        "machine": common.machine(),
        "rounds": args.rounds,
        "results": results,
    }
    common.write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
