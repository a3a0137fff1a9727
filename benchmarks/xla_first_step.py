"""XLA probe: first-call and steady step time of one batch shape, with and without jit_compile.

Builds the recipe's trainer twice (float32, bucket width 8; without and with XLA), takes the
first batch whose time dimension is `--time`, and times the first train step (tracing, and with
XLA compiling) and the median of `--steps` further steps on that same batch. The XLA runner gets
fixed bucket shapes, as the trainer gives it. Prints one JSON line per runner as it finishes,
so a run stopped during the XLA compile still leaves the float32 figures.

    python benchmarks/xla_first_step.py --corpus-dir ../shared/corpora/multi30k \\
        --model-dir runs/multi30k_de_en
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from train_throughput import ProjectRunner, train_step  # noqa: E402

from translator.config import config_from_dict, config_to_dict  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_data_args(parser)
    parser.add_argument("--split", default="train", help="training split file prefix")
    parser.add_argument("--time", type=int, default=24, help="time dimension of the batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    args = parser.parse_args(argv)

    recipe = common.load_recipe(args)
    tokenizers, encoded = common.encoded_split(args, recipe, args.split)
    base = config_to_dict(recipe)
    base["output_dir"] = "/tmp/bench_xla_unused"  # the runners never write checkpoints
    for name, jit in (("float32", False), ("xla_float32", True)):
        train = {**base["train"], "bucket_width": 8, "jit_compile": jit, "mixed_precision": False}
        config = config_from_dict({**base, "train": train})
        runner = ProjectRunner(name, config, encoded, tokenizers)
        batch = next((b for b in runner.dataset if b[0].shape[1] == args.time), None)
        if batch is None:
            raise SystemExit(f"no batch with time dimension {args.time} in the {args.split} split")
        start = time.perf_counter()
        train_step(runner.trainer, batch)
        first = time.perf_counter() - start
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            _, tokens = train_step(runner.trainer, batch)
            times.append(time.perf_counter() - start)
        report = {
            "runner": name,
            "batch_shape": list(batch[0].shape),
            "target_tokens": tokens,
            "first_call_s": round(first, 1),
            "step_s_median": round(common.median(times), 3),
            "machine": common.machine(),
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
