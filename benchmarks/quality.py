"""Translation quality of a recipe: train it (or take a trained model), then score the test split
with greedy and beam-5 decoding. Prints one JSON object and optionally writes it to a file.

    python benchmarks/quality.py --config configs/multi30k_de_en.yaml \
        --set data.manual_dir=../shared/corpora/multi30k --output benchmarks/results/de_en.json
    python benchmarks/quality.py --model runs/multi30k_de_en --output ...   # no training

The JSON holds the sacreBLEU scores and signatures, decoding speed, the config, the training
time (measured here, or read from the model's history when --model is given), the git commit
and the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_json  # noqa: E402

from translator import data as data_lib  # noqa: E402
from translator.api import Translator  # noqa: E402
from translator.config import config_to_dict, load_config  # noqa: E402
from translator.evaluate import score  # noqa: E402


def git_commit() -> str:
    """The repository's HEAD commit (with -dirty when the tree has changes), or 'unknown'."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout
        return commit + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def training_seconds_from_history(model_dir: Path) -> float | None:
    """Wall-clock training time recorded in history.json, if the trainer recorded it."""
    path = model_dir / "history.json"
    if not path.is_file():
        return None
    history = json.loads(path.read_text())
    seconds = [r.get("seconds") for r in history if r.get("seconds") is not None]
    return max(seconds) if seconds else None


def decode_and_score(
    translator: Translator, corpus: data_lib.ParallelCorpus, beam_size: int
) -> dict:
    """sacreBLEU of one decoding setting, with its speed (sentences per second)."""
    translator.translate(corpus.sources[:8], beam_size=beam_size)  # trace outside the timing
    start = time.perf_counter()
    hyps = translator.translate(corpus.sources, beam_size=beam_size)
    seconds = time.perf_counter() - start
    result = score(hyps, corpus.targets)
    result.update(
        beam_size=beam_size,
        seconds=round(seconds, 2),
        sentences_per_second=round(len(hyps) / seconds, 1),
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="recipe to train (YAML)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--model", help="evaluate this trained model directory instead")
    parser.add_argument("--split", default="test", choices=("valid", "test"))
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--output", help="also write the JSON result here")
    args = parser.parse_args(argv)
    if not args.config and not args.model:
        parser.error("give --config (train, then evaluate) or --model (evaluate only)")

    train_seconds = None
    if args.model:
        model_dir = Path(args.model)
        config = load_config(model_dir / "config.yaml", args.set)
        train_seconds = training_seconds_from_history(model_dir)
    else:
        from translator.train import train

        config = load_config(args.config, args.set)
        start = time.perf_counter()
        train(config)
        train_seconds = time.perf_counter() - start
        model_dir = Path(config.output_dir)

    translator = Translator.load(model_dir)
    corpus = data_lib.load_corpus(config.data, args.split)
    result = {
        "model_dir": str(model_dir),
        "split": f"{args.split} ({corpus.origin}, {len(corpus)} sentences)",
        "greedy": decode_and_score(translator, corpus, 1),
        f"beam{args.beam_size}": decode_and_score(translator, corpus, args.beam_size),
        "training_seconds": round(train_seconds, 1) if train_seconds else None,
        "config": config_to_dict(config),
        "git_commit": git_commit(),
        "machine": machine(),
    }
    write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
