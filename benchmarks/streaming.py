"""Streaming the training data: start-up cost on large corpora, and training throughput.

Three commands:

    python benchmarks/streaming.py generate --pairs 2000000 --out /tmp/corpus_2m
    python benchmarks/streaming.py measure --corpus /tmp/corpus_2m --repeats 3
    python benchmarks/streaming.py throughput --config configs/multi30k_de_en_attention.yaml \\
        --set data.manual_dir=../shared/corpora/multi30k --output-dir /tmp/m30k --steps 100

`generate` writes `train.src` / `train.tgt`: synthetic sentence pairs of about 50 characters a
side (Zipf-distributed pseudo-words, the target a word-for-word mapping with one swap), plain
files, seeded. Never commit them.

`measure` runs the whole `translator train` process (a tiny model, `train.max_steps: 30`, no
validation set) `--repeats` times, each into a fresh output directory, and prints one JSON
object: per run the process's wall-clock seconds, the seconds until its first training step
had finished (a hook on the trainer's per-step report, the same on every version of the code)
and its peak RSS (`ru_maxrss` from `wait4`), and their medians. It imports nothing from the
project itself, so the code measured is whatever `translator` the child imports
(`PYTHONPATH`): run it once with the old code and once with the new.

`throughput` trains in a child process with the trainer's own step on the run's own batches
(`load_data`, `train_batches`: the same calls in the old code and the new): the seconds until
an epoch's first batch (the shuffle buffer filling: with a stream, reading and tokenizing up to
`train.shuffle_buffer` pairs), then `--warmup` steps, then the target tokens per second of
`--steps` steps. Pass `--set data.in_memory_pairs=0` to stream a small corpus like a large one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The child: reports when the first training step is done, then runs the CLI unchanged.
CHILD = """
import os, sys, time
import translator
from translator.training import history
print(f"TRANSLATOR {os.path.dirname(translator.__file__)}", file=sys.stderr, flush=True)
_step = history.Recorder.step
def step(self, *args, **kwargs):
    if not getattr(step, "seen", False):
        step.seen = True
        print(f"FIRST_STEP {time.time() - float(os.environ['BENCH_T0']):.3f}", file=sys.stderr,
              flush=True)
    return _step(self, *args, **kwargs)
history.Recorder.step = step
from translator.cli import main
sys.exit(main(sys.argv[1:]))
"""

CONFIG = """\
data:
  train: {{source: {source}, target: {target}}}
  source_lang: xx
  target_lang: yy
  max_length: 64
tokenizer:
  vocab_size: 8000
model:
  embedding_dim: 32
  units: 32
train:
  batch_size: 64
  max_steps: 30
  epochs: 0
  log_every: 10
  checkpoint_every: 1000
  mixed_precision: false
output_dir: {output}
"""


def generate(pairs: int, out: Path, seed: int = 0) -> None:
    """Writes `pairs` synthetic pairs (about 50 characters a side) to out/train.{src,tgt}."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    size = 20_000

    def words(n: int) -> np.ndarray:
        lengths = rng.integers(2, 9, n)
        return np.array(["".join(rng.choice(letters, k)) for k in lengths])

    source_words, target_words = words(size), words(size)
    weights = 1.0 / np.arange(1, size + 1)
    weights /= weights.sum()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.src", "w") as src, open(out / "train.tgt", "w") as tgt:
        for start in range(0, pairs, 100_000):
            n = min(100_000, pairs - start)
            ids = rng.choice(size, size=(n, 10), p=weights)  # [n, 10] word ids
            lengths = rng.integers(6, 11, n)
            for row, length in zip(ids, lengths, strict=True):
                row = row[:length]
                swapped = row.copy()
                swapped[[0, 1]] = swapped[[1, 0]]
                src.write(" ".join(source_words[row]) + "\n")
                tgt.write(" ".join(target_words[swapped]) + "\n")


def run_once(corpus: Path, work: Path, python: str, env: dict) -> dict:
    """One `translator train` process: seconds, seconds to the first step, peak RSS (MB)."""
    output = work / "model"
    config = work / "config.yaml"
    config.write_text(
        CONFIG.format(
            source=corpus / "train.src", target=corpus / "train.tgt", output=output.as_posix()
        )
    )
    started = time.time()
    proc = subprocess.Popen(
        [python, "-c", CHILD, "train", str(config), "--no-progress"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=work,  # not the caller's directory: PYTHONPATH alone picks the code measured
        env={**env, "BENCH_T0": repr(started), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"translator train failed:\n{stderr[-3000:]}")
    first = [line for line in stderr.splitlines() if line.startswith("FIRST_STEP ")]
    code = [line.split(" ", 1)[1] for line in stderr.splitlines() if line.startswith("TRANSLATOR ")]
    return {
        "code": code[0] if code else None,
        "seconds": round(seconds, 2),
        "first_step_seconds": float(first[0].split()[1]) if first else None,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def measure(args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(dir=args.work) as work:
            runs.append(run_once(Path(args.corpus), Path(work), sys.executable, env))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    lines = sum(1 for _ in open(Path(args.corpus) / "train.src", "rb"))
    return {
        "corpus": str(args.corpus),
        "pairs": lines,
        "bytes": sum((Path(args.corpus) / f"train.{s}").stat().st_size for s in ("src", "tgt")),
        "pythonpath": env.get("PYTHONPATH"),
        "runs": runs,
        "median": {
            key: statistics.median(r[key] for r in runs)
            for key in ("seconds", "first_step_seconds", "peak_rss_mb")
        },
    }


THROUGHPUT = """
import json, os, sys, time
import keras, tensorflow as tf
from translator.config import load_config
from translator.train import Trainer
from translator.training.data import load_data, train_batches

config = load_config(sys.argv[1], sys.argv[4:])
warmup, steps = int(sys.argv[2]), int(sys.argv[3])
trainer = Trainer(config, progress=False)
keras.utils.set_random_seed(config.train.seed)
out = trainer.output_dir
out.mkdir(parents=True, exist_ok=True)
began = time.perf_counter()
tokenizers, pairs, _ = load_data(config, out, out, True)
loaded = time.perf_counter() - began
trainer._build(tokenizers)
stop = tf.constant(0.0)
began = time.perf_counter()
batches = iter(train_batches(pairs, config, 1, 0))
first = next(batches)
epoch_start = time.perf_counter() - began  # the first batch of an epoch: shuffle buffer fill
trainer._train_step(first, stop)
for _ in range(warmup):
    trainer._train_step(next(batches), stop)
tokens, began = 0.0, time.perf_counter()
for _ in range(steps):
    tokens += float(trainer._train_step(next(batches), stop)[1])
seconds = time.perf_counter() - began
print("RESULT " + json.dumps({
    "kind": type(pairs).__name__, "load_data_seconds": round(loaded, 2),
    "epoch_start_seconds": round(epoch_start, 2), "steps": steps,
    "target_tokens_per_s": round(tokens / seconds, 1), "load_average": os.getloadavg()}))
"""


def throughput(args: argparse.Namespace) -> dict:
    """Steady-state training throughput of the trainer's own step on the run's own batches."""
    command = [sys.executable, "-c", THROUGHPUT, args.config, str(args.warmup), str(args.steps)]
    command += [*args.set, f"output_dir={args.output_dir}"]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=args.output_dir,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"throughput run failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return {"pythonpath": os.environ.get("PYTHONPATH"), **json.loads(line.split(" ", 1)[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write a synthetic corpus")
    gen.add_argument("--pairs", type=int, required=True)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--seed", type=int, default=0)
    run = commands.add_parser("measure", help="time `translator train` on a corpus")
    run.add_argument("--corpus", required=True, help="a directory written by `generate`")
    run.add_argument("--repeats", type=int, default=3)
    run.add_argument("--work", default=None, help="where the output directories go (temporary)")
    speed = commands.add_parser("throughput", help="steady-state training throughput")
    speed.add_argument("--config", required=True, help="a recipe, e.g. Multi30k's")
    speed.add_argument("--set", action="append", default=[], help="config override key=value")
    speed.add_argument("--warmup", type=int, default=10)
    speed.add_argument("--steps", type=int, default=100)
    speed.add_argument("--output-dir", required=True, help="reused: SentencePiece models kept")
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.pairs, args.out, args.seed)
    elif args.command == "measure":
        print(json.dumps(measure(args), indent=2))
    else:
        args.config = os.path.abspath(args.config)
        os.makedirs(args.output_dir, exist_ok=True)
        print(json.dumps(throughput(args)))


if __name__ == "__main__":
    main()
