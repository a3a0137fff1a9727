"""Which way round to multiply a decoder step's weights: `(Wᵀ xᵀ)ᵀ` or `x (Wᵀ)ᵀ`.

The bfloat16 search step (`translator.search_step`) stores every weight transposed, `[out, in]`,
and can multiply `x` `[rows, in]` by it either as `transpose(matmul(Wt, x, transpose_b=True))`
("weight first") or as `matmul(x, Wt, transpose_b=True)` ("transpose_b"). oneDNN picks
different kernels for the two, and which is faster depends on the shape and the row count.
This times both, for each of the step's weight shapes (defaults: the 30-minute de→en recipe's
decoder: LSTM `[x, h]` by the stacked kernels, the attention combination, the tied output
matrix), at each row count, as 100 products inside one `tf.while_loop` (the way the search
runs them), median of `--repeats`, in alternating order over `--rounds`.

    python benchmarks/matmul_orders.py --rows 1,5,64,320 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import tensorflow as tf  # noqa: E402

ORDERS = {
    "weight_first": lambda x, wt: tf.transpose(tf.matmul(wt, x, transpose_b=True)),
    "transpose_b": lambda x, wt: tf.matmul(x, wt, transpose_b=True),
}


def time_order(order: str, wt: tf.Variable, x: tf.Tensor, repeats: int) -> float:
    """Milliseconds per product: the median over `repeats` of 100 products in one loop."""
    multiply = ORDERS[order]

    @tf.function
    def run(x):
        def body(i, x, total):
            y = multiply(x, wt)
            return i + 1, x, total + tf.cast(tf.reduce_sum(y[:1, :1]), tf.float32)

        return tf.while_loop(lambda i, *_: i < 100, body, (0, x, 0.0))[2]

    return common.ms_per_iteration(run, x, repeats, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes",
        default="lstm=1024x2048,combine=1024x256,output=256x8000",
        help="name=in x out, comma-separated",
    )
    parser.add_argument("--rows", default="1,5,64,320", help="row counts (sentences x beam)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two orders")
    parser.add_argument("--repeats", type=int, default=7, help="timed loops per measurement")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    shapes = common.parse_shapes(args.shapes)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        for name, (n_in, n_out) in shapes.items():
            wt = tf.Variable(tf.cast(tf.random.normal([n_out, n_in]) * 0.05, args.dtype))
            x = tf.cast(tf.random.normal([rows, n_in]), args.dtype)
            times = {order: [] for order in ORDERS}
            for _ in range(args.rounds):
                for order in ORDERS:
                    times[order].append(time_order(order, wt, x, args.repeats))
            ms = {order: round(common.median(t), 4) for order, t in times.items()}
            row = {"rows": rows, "weight": name, "in": n_in, "out": n_out, "ms": ms}
            row["transpose_b_speedup"] = round(ms["weight_first"] / ms["transpose_b"], 2)
            results.append(row)
            print(rows, name, ms, row["transpose_b_speedup"], file=sys.stderr)
    result = {
        "benchmark": "matmul_orders",
        "machine": common.machine(),
        "dtype": args.dtype,
        "rounds": args.rounds,
        "results": results,
    }
    common.write_json(result, args.output)


if __name__ == "__main__":
    main()
