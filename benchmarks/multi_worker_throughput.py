"""Training throughput with 1 and 2 MultiWorkerMirroredStrategy workers on this machine.

Each run starts real worker processes on loopback ports (TF_CONFIG), the same global batch in
every run, and times every train step of the chief after `--warmup` steps (tracing excluded).
Runs are interleaved in rounds (default, 1 worker, 2 workers, then again) so a load change on a
shared machine hits every setting alike; the figures are medians over rounds.

Example (Multi30k de-en files, a smaller model than the recipe so a round takes minutes):

    python benchmarks/multi_worker_throughput.py --corpus-dir ../shared/corpora/multi30k \\
        --set model.units=128 --set model.embedding_dim=128

Prints one JSON object: machine, settings, per-setting steps/s and tokens/s, ratios to default.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from translator.config import dump_config, load_config  # noqa: E402

SETTINGS = {
    "default": ("default", 1),
    "1 worker": ("multi_worker", 1),
    "2 workers": ("multi_worker", 2),
}


def worker_main(config_path: str, warmup: int) -> None:
    """One worker: trains `train.max_steps` steps, prints the chief's timed steps as JSON."""
    from translator.train import Trainer

    class TimedTrainer(Trainer):
        def _build(self, tokenizers):
            super()._build(tokenizers)
            step, self.times = self._train_step, []

            def timed(batch, stop):
                start = time.perf_counter()
                loss, tokens, stopping = step(batch, stop)
                tokens = float(tokens)  # waits for the step
                self.times.append((time.perf_counter() - start, tokens))
                return loss, tokens, stopping

            self._train_step = timed

    trainer = TimedTrainer(load_config(config_path), progress=False)
    trainer.fit()
    timed = trainer.times[warmup:]
    seconds, tokens = sum(t for t, _ in timed), sum(n for _, n in timed)
    print(
        json.dumps(
            {"chief": trainer.is_chief, "steps": len(timed), "seconds": seconds, "tokens": tokens}
        )
    )


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_setting(args, base, name: str, workdir: Path, spm_dir: Path) -> dict:
    strategy, workers = SETTINGS[name]
    ports = free_ports(workers)
    procs = []
    for index in range(workers):
        out = workdir / f"{name.replace(' ', '_')}_{index}_{time.monotonic_ns()}"
        out.mkdir(parents=True)
        for model in spm_dir.glob("spm.*.model"):  # same vocabulary, no tokenizer training
            (out / model.name).write_bytes(model.read_bytes())
        config = load_config(
            args.config,
            [
                *base,
                f"train.strategy={strategy}",
                f"output_dir={out}",
                "train.checkpoint_every=100000",
            ],
        )
        path = out / "config.yaml.bench"
        dump_config(config, path)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if strategy == "multi_worker":
            cluster = {"worker": [f"localhost:{p}" for p in ports]}
            env["TF_CONFIG"] = json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            )
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(path), "--warmup", str(args.warmup)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=args.timeout)
        if proc.returncode:
            raise SystemExit(f"{name}: worker failed\n{stderr[-3000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    chief = next(r for r in results if r["chief"])
    return {
        "steps_per_second": chief["steps"] / chief["seconds"],
        "tokens_per_second": chief["tokens"] / chief["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--corpus-dir", help="directory with train.{lang}[.gz] files")
    parser.add_argument("--config", default="configs/multi30k_de_en.yaml", help="project recipe")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps (tracing)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.warmup)
        return
    recipe = load_config(args.config, args.set)
    src = common.corpus_file(args.corpus_dir, "train", recipe.data.source_lang)
    tgt = common.corpus_file(args.corpus_dir, "train", recipe.data.target_lang)
    base = [
        *args.set,
        "data.tfds=null",
        f"data.train.source={src}",
        f"data.train.target={tgt}",
        "data.valid.source=null",
        "train.epochs=0",
        f"train.max_steps={args.warmup + args.steps}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        spm_dir = workdir / "spm"
        from translator import data as data_lib
        from translator.tokenizer import load_or_train

        train = data_lib.read_parallel(src, tgt)
        load_or_train(spm_dir, train.sources, train.targets, recipe.tokenizer, recipe.train.seed)
        runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
        for _ in range(args.rounds):
            for name in SETTINGS:
                runs[name].append(run_setting(args, base, name, workdir, spm_dir))
    summary = {}
    for name, rounds in runs.items():
        summary[name] = {
            key: round(statistics.median(r[key] for r in rounds), 2)
            for key in ("steps_per_second", "tokens_per_second")
        }
        summary[name]["ratio_to_default"] = round(
            statistics.median(
                r["tokens_per_second"] / d["tokens_per_second"]
                for r, d in zip(rounds, runs["default"], strict=True)
            ),
            3,
        )
    print(
        json.dumps(
            {
                "machine": common.machine(),
                "settings": {
                    "config": args.config,
                    "overrides": args.set,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "rounds": args.rounds,
                },
                "results": summary,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
