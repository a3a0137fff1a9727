"""Multi-sentence inputs: a test set of consecutive sentences joined in pairs and threes, and the
BLEU of a model on it with and without splitting inputs into sentences (`decode.split`).

    python benchmarks/long_inputs.py --corpus-dir ../shared/corpora/multi30k \
        --model /work/models/de_en_30min_stop15 --output benchmarks/results/long_inputs.json
    python benchmarks/long_inputs.py --corpus-dir ../shared/corpora/multi30k \
        --source-lang de --target-lang en --write /tmp/long     # the files only: /tmp/long.{de,en}

Lines 1-250 join sentences 1-500 of the split in pairs, lines 251-500 join its last 750 in
threes (with the 1,000 sentences of test_2016_flickr, sentences 251-500 are in both halves);
the references are joined the same way. With --model, prints one JSON object: sacreBLEU (the
project's `translator.evaluate.score`) with splitting on and off, greedy and beam 5, on these
500 lines, on each half, and on the single-sentence split itself for reference; how many lines
the splitter cut back into exactly their original sentences; seconds; the machine. The same
figures come from `translator evaluate --model DIR --source /tmp/long.de --target /tmp/long.en
[--beam-size 5] [--no-split]` on the written files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from translator.data import read_parallel  # noqa: E402


def join_consecutive(
    sources: list[str], targets: list[str], pairs: int = 250, threes: int = 250
) -> tuple[list[str], list[str], list[list[str]]]:
    """A multi-sentence test set from aligned single sentences.

    The first `pairs` lines join the first 2 * `pairs` sentences two by two; the next `threes`
    lines join the last 3 * `threes` sentences three by three. Sentences are joined with a
    space, on both sides alike.

    Returns:
        (sources, references, the source sentences of each line).

    Raises:
        ValueError: the sides differ in length, or hold too few sentences.
    """
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} source and {len(targets)} target sentences")
    need = max(2 * pairs, 3 * threes)
    if len(sources) < need:
        raise ValueError(f"need at least {need} sentence pairs, got {len(sources)}")
    groups = [range(2 * i, 2 * i + 2) for i in range(pairs)]
    start = len(sources) - 3 * threes
    groups += [range(start + 3 * i, start + 3 * i + 3) for i in range(threes)]
    parts = [[sources[j].strip() for j in g] for g in groups]
    return (
        [" ".join(p) for p in parts],
        [" ".join(targets[j].strip() for j in g) for g in groups],
        parts,
    )


def split_files(corpus_dir: Path, split: str, lang: str) -> Path:
    """The file `{split}.{lang}` (or `.gz`) in `corpus_dir`."""
    for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
        if (corpus_dir / name).is_file():
            return corpus_dir / name
    raise SystemExit(f"error: no {split}.{lang}[.gz] in {corpus_dir}")


def measure(model_dir: str, sources, references, parts, single, beam_sizes=(1, 5)) -> dict:
    """BLEU and chrF with splitting on and off for each beam size, on the joined lines, on
    each half and on the single sentences `single` = (sources, references)."""
    from translator.api import Translator  # noqa: PLC0415  (TensorFlow only when measuring)
    from translator.evaluate import score  # noqa: PLC0415

    translator = Translator.load(model_dir)
    units = translator.splitter.segment(sources).units
    exact = sum(translator.splitter.split(s) == p for s, p in zip(sources, parts, strict=True))
    pairs = sum(len(p) == 2 for p in parts)
    runs = []
    for beam_size in beam_sizes:
        translator.translate(sources[:4], beam_size=beam_size)  # trace outside the timing
        for split in (True, False):
            began = time.perf_counter()
            hyps = translator.translate(sources, beam_size=beam_size, split=split)
            seconds = time.perf_counter() - began
            whole, halves = score(hyps, references), {}
            for name, rows in (("pairs", slice(0, pairs)), ("threes", slice(pairs, None))):
                halves[name] = round(score(hyps[rows], references[rows])["bleu"], 2)
            began = time.perf_counter()
            single_hyps = translator.translate(single[0], beam_size=beam_size, split=split)
            single_seconds = time.perf_counter() - began
            reference = score(single_hyps, single[1])
            runs.append(
                {
                    "beam_size": beam_size,
                    "split": split,
                    "bleu": round(whole["bleu"], 2),
                    "chrf": round(whole["chrf"], 2),
                    "bleu_pairs": halves["pairs"],
                    "bleu_threes": halves["threes"],
                    "seconds": round(seconds, 1),
                    "single_sentence_bleu": round(reference["bleu"], 2),
                    "single_sentence_seconds": round(single_seconds, 1),
                    "signature": whole["bleu_signature"],
                }
            )
    return {
        "lines": len(sources),
        "sentences": sum(len(p) for p in parts),
        "units_when_split": len(units),
        "lines_split_exactly": exact,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", required=True, help="directory with SPLIT.LANG[.gz]")
    parser.add_argument("--split", default="test_2016_flickr", help="file stem of the split")
    parser.add_argument("--source-lang", default="de")
    parser.add_argument("--target-lang", default="en")
    parser.add_argument("--pairs", type=int, default=250, help="lines of two sentences")
    parser.add_argument("--threes", type=int, default=250, help="lines of three sentences")
    parser.add_argument("--write", metavar="PREFIX", help="write PREFIX.SRC and PREFIX.TGT")
    parser.add_argument("--model", help="measure BLEU of this model (training or export dir)")
    parser.add_argument("--output", help="also write the JSON result here")
    args = parser.parse_args(argv)
    corpus = Path(args.corpus_dir)
    corpus_ = read_parallel(
        split_files(corpus, args.split, args.source_lang),
        split_files(corpus, args.split, args.target_lang),
    )
    single = (corpus_.sources, corpus_.targets)
    try:
        sources, references, parts = join_consecutive(*single, args.pairs, args.threes)
    except ValueError as exc:
        raise SystemExit(f"error: {args.split}: {exc}") from None
    result: dict = {"corpus": f"{corpus / args.split}.{{{args.source_lang},{args.target_lang}}}"}
    if args.write:
        for lang, lines in ((args.source_lang, sources), (args.target_lang, references)):
            path = Path(f"{args.write}.{lang}")
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        result["written"] = [f"{args.write}.{args.source_lang}", f"{args.write}.{args.target_lang}"]
    if args.model:
        from common import machine  # noqa: PLC0415  (imports TensorFlow)

        result["model"] = args.model
        result.update(measure(args.model, sources, references, parts, single))
        result["machine"] = machine()
    text = json.dumps(result, indent=1, ensure_ascii=False)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
