"""Shared by the benchmarks: machine description, corpus loading and encoding, medians."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from translator import data as data_lib
from translator.config import Config, load_config
from translator.pipeline import encode_corpus
from translator.tokenizer import Tokenizers, load_or_train

# The CPU flags that decide the speed of float32 and bfloat16 matmuls.
SPEED_FLAGS = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


def machine() -> dict:
    """CPU model, cores, memory, library versions and accelerators of this machine."""
    cpu = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA")  # e.g. AVX2: oneDNN acts as on such a CPU
    return {
        "cpu": cpu,
        **({"onednn_max_cpu_isa": isa_cap} if isa_cap else {}),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "cpu_flags": sorted(flags & SPEED_FLAGS),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
    }


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by both benchmarks: corpus files, recipe, tokenizer/model directory."""
    parser.add_argument(
        "--corpus-dir",
        required=True,
        help="directory with {split}.{lang}[.gz] one-sentence-per-line files (e.g. Multi30k)",
    )
    parser.add_argument("--config", default="configs/multi30k_de_en.yaml", help="project recipe")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument(
        "--model-dir",
        help="a trained model directory (SentencePiece models, checkpoints); without it the "
        "tokenizers are trained on the training split into a temporary directory",
    )


def load_recipe(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.set)


def corpus_file(corpus_dir: str, split: str, lang: str) -> Path:
    """`{split}.{lang}.gz`, or the plain `{split}.{lang}` when no .gz exists."""
    path = Path(corpus_dir) / f"{split}.{lang}.gz"
    return path if path.exists() else path.with_suffix("")


def read_split(args: argparse.Namespace, config: Config, split: str) -> data_lib.ParallelCorpus:
    return data_lib.read_parallel(
        corpus_file(args.corpus_dir, split, config.data.source_lang),
        corpus_file(args.corpus_dir, split, config.data.target_lang),
    )


def tokenizers_for(args: argparse.Namespace, config: Config, train) -> Tokenizers:
    """Tokenizers of `--model-dir`, or SentencePiece trained on `train` in a temporary dir."""
    directory = args.model_dir or tempfile.mkdtemp(prefix="bench_spm_")
    return load_or_train(directory, train.sources, train.targets, config.tokenizer, 0)


def encoded_split(args: argparse.Namespace, config: Config, split: str):
    """(tokenizers, encoded corpus) of `split`: read, tokenized as in `tokenizers_for`, encoded."""
    corpus = read_split(args, config, split)
    tokenizers = tokenizers_for(args, config, corpus)
    encoded = encode_corpus(tokenizers, corpus.sources, corpus.targets, config.data.max_length)
    return tokenizers, encoded


def write_json(result: dict, output: str | None) -> None:
    """Prints `result` as JSON and, with `output`, writes the same text there."""
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n", encoding="utf-8")
    print(text)


def profiler_op_events(logdir: Path):
    """(op name, op type, seconds) of every op event of the TensorFlow profiler's trace under
    `logdir` (its host plane: the executor's threads)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: PLC0415

    (path,) = list(Path(logdir).rglob("*.xplane.pb"))
    space = xplane_pb2.XSpace()
    space.ParseFromString(path.read_bytes())
    for plane in space.planes:
        meta = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                full = meta[event.metadata_id]
                name, _, kind = full.name.rpartition(":")
                yield name, full.display_name or kind, event.duration_ps * 1e-12


def median(values) -> float:
    return float(statistics.median(values)) if values else float("nan")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def read_lines(path: str) -> list[str]:
    """The lines of a text file (gzip-compressed when it ends in .gz), stripped."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f]


def parse_shapes(spec: str) -> dict[str, tuple[int, ...]]:
    """'lstm=1024x2048,output=256x8000' -> {'lstm': (1024, 2048), 'output': (256, 8000)}."""
    shapes = {}
    for item in spec.split(","):
        name, dims = item.split("=")
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    return shapes


def ms_per_iteration(run, arg, repeats: int, iterations: int) -> float:
    """Milliseconds per iteration of `run(arg)`, a traced function that loops `iterations`
    times and returns a tensor: one warm-up call, then the median over `repeats` calls."""
    run(arg).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(arg).numpy()
        times.append((time.perf_counter() - start) / iterations * 1e3)
    return median(times)


def with_overrides(base: dict, overrides: dict, **train) -> dict:
    """A config dict: `base` with a variant's overrides (`train` keys, `model.KEY` keys) and
    then `train` applied."""
    model = {k.removeprefix("model."): v for k, v in overrides.items() if k.startswith("model.")}
    plain = {k: v for k, v in overrides.items() if "." not in k}
    return {
        **base,
        "train": {**base["train"], **plain, **train},
        "model": {**base["model"], **model},
    }


def parse_variants(spec: str, recipe: Config, cumulative: bool) -> list[tuple[str, dict]]:
    """Parses "name:key=value,...;name:...": one (name, overrides) per variant.

    Keys are `train` keys, or `model.KEY` for the model section. With `cumulative`, each
    variant starts from the previous one's overrides; otherwise from none. `from=X` starts from
    variant X's instead. A value "RECIPE" takes the recipe's own value of that key;
    "true"/"false" are booleans, numbers are numbers, anything else a string.
    """
    variants: list[tuple[str, dict]] = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, pairs = part.partition(":")
        current = dict(variants[-1][1]) if variants and cumulative else {}
        for pair in filter(None, pairs.split(",")):
            key, _, raw = pair.partition("=")
            if key == "from":
                current = dict(dict(variants)[raw])
                continue
            section, _, field = key.rpartition(".")
            if raw == "RECIPE":
                value = getattr(getattr(recipe, section or "train"), field)
            elif raw in ("true", "false"):
                value = raw == "true"
            else:
                try:
                    value = float(raw) if "." in raw else int(raw)
                except ValueError:
                    value = raw
            current[key] = value
        variants.append((name, current))
    return variants
