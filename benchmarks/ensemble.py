"""An ensemble against its members: sacreBLEU (greedy and beam) and sentences/s of each member
alone and of all of them together (`Translator.load([dir1, dir2, ...])`). Prints one JSON object.

    python benchmarks/ensemble.py \
        --model /work/models/de_en_seed1 --model /work/models/de_en_seed2 \
        --source ../shared/corpora/multi30k/test_2016_flickr.de.gz \
        --target ../shared/corpora/multi30k/test_2016_flickr.en.gz --output results/ensemble.json

Each setting is decoded once after a short warm-up (tracing is not timed); on a shared machine
the speeds carry its load, which the JSON records (`machine.load_average`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_json  # noqa: E402
from quality import decode_and_score, git_commit  # noqa: E402

from translator import data as data_lib  # noqa: E402
from translator.api import Translator  # noqa: E402


def compare(
    model_dirs: Sequence[str | Path],
    source: str | Path,
    target: str | Path,
    beam_size: int = 5,
    limit: int | None = None,
) -> dict:
    """Scores each member alone and the ensemble of all of them on one test set.

    Args:
        model_dirs: two or more trained model directories sharing their SentencePiece models.
        source, target: the test set (plain or gzip files, one sentence per line).
        beam_size: the beam setting measured besides greedy decoding.
        limit: score only the first `limit` sentences (a quick check).

    Returns:
        {"test": ..., "members": [{model_dir, greedy, beamN}, ...], "ensemble": {greedy, beamN}}
        where greedy and beamN are `quality.decode_and_score` results (BLEU, chrF, signatures,
        seconds, sentences_per_second).
    """
    corpus = data_lib.read_parallel(source, target)
    if limit is not None:
        corpus = replace(corpus, sources=corpus.sources[:limit], targets=corpus.targets[:limit])

    def run(translator: Translator) -> dict:
        return {
            "greedy": decode_and_score(translator, corpus, 1),
            f"beam{beam_size}": decode_and_score(translator, corpus, beam_size),
        }

    members = [{"model_dir": str(d), **run(Translator.load(d))} for d in model_dirs]
    ensemble = {"model_dirs": [str(d) for d in model_dirs], **run(Translator.load(model_dirs))}
    return {
        "test": f"{corpus.origin} ({len(corpus)} sentences)",
        "members": members,
        "ensemble": ensemble,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="member (repeat)")
    parser.add_argument("--source", required=True, help="test source file (plain or .gz)")
    parser.add_argument("--target", required=True, help="test reference file (plain or .gz)")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--limit", type=int, help="only the first N sentences")
    parser.add_argument("--output", help="also write the JSON result here")
    args = parser.parse_args(argv)
    if len(args.model) < 2:
        parser.error("give two or more --model directories")
    result = compare(args.model, args.source, args.target, args.beam_size, args.limit)
    result.update(git_commit=git_commit(), machine=machine())
    write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
