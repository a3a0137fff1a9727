"""Sentence splitters compared: sentencex (the project's), sentence-splitter (Moses rules), pysbd.

    pip install --target /tmp/splitters sentence-splitter pysbd   # not project dependencies
    PYTHONPATH=/tmp/splitters python benchmarks/splitters.py --corpus-dir ../shared/corpora/multi30k

For each splitter and language: the hand-written cases it gets wrong, as it splits them
(abbreviations, ordinals, several end marks), and on a Multi30k split: how many single captions
it cuts (it should cut none), how many of the captions joined in consecutive pairs it cuts back
into exactly their two captions, and the milliseconds per 1,000 captions. Prints one JSON
object. A splitter that is not installed, or has no rules for a language, is reported as such.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path

# (language, the text's sentences separated by " | ")
CASES = [
    ("en", "Dr. Smith went to Washington. | He arrived at 5 p.m. on Monday."),
    ("en", 'Wait... | What happened? | "Nothing." | She left.'),
    ("en", "The U.S. economy grew 3.5% in 2020. | Mr. Brown said so."),
    ("de", "Dr. Müller kam z. B. am 3. Mai an. | Er blieb bis zum 5. Juni."),
    ("de", "Das ist ca. 5 km entfernt, d.h. nicht weit. | Wir gehen zu Fuß."),
    ("de", "Hr. Meier sagte: „Komm her!“ | Dann ging er."),
    ("de", "Der 1. FC Köln gewann 3:1. | Die Fans jubelten."),
    ("fr", "M. Dupont est arrivé. | Il a dit bonjour."),
    ("fr", "C'est-à-dire p. ex. le 1er janv. | Nous partons."),
    ("fr", "Bonjour ! | Comment ça va ? | Très bien."),
    ("cs", "Např. prof. Novák přišel v 5 hod. ráno. | Pak odešel."),
    ("cs", "Viz str. 5 a obr. 3. | To je vše."),
]


def splitters() -> dict[str, Callable[[str], Callable[[str], list[str]]] | str]:
    """name -> a factory of `split(text)` per language, or why it is unavailable."""
    found: dict = {}
    try:
        import sentencex

        found["sentencex"] = lambda lang: lambda text: list(sentencex.segment(lang, text))
    except ImportError as exc:
        found["sentencex"] = f"not installed: {exc}"
    try:
        from sentence_splitter import SentenceSplitter

        found["sentence-splitter"] = lambda lang: SentenceSplitter(language=lang).split
    except ImportError as exc:
        found["sentence-splitter"] = f"not installed: {exc}"
    try:
        import pysbd

        found["pysbd"] = lambda lang: pysbd.Segmenter(language=lang, clean=False).segment
    except ImportError as exc:
        found["pysbd"] = f"not installed: {exc}"
    return found


def sentences(split: Callable[[str], list[str]], text: str) -> list[str]:
    return [s.strip() for s in split(text) if s.strip()]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", required=True, help="directory with SPLIT.LANG.gz")
    parser.add_argument("--split", default="test_2016_flickr")
    args = parser.parse_args()
    result: dict = {}
    for name, factory in splitters().items():
        if isinstance(factory, str):
            result[name] = factory
            continue
        report: dict = {}
        for lang in ("en", "de", "fr", "cs"):
            try:
                split = factory(lang)
            except Exception as exc:  # noqa: BLE001  (each library has its own error)
                report[lang] = f"no rules: {exc}"
                continue
            wrong = [
                sentences(split, case.replace(" | ", " "))
                for lg, case in CASES
                if lg == lang and sentences(split, case.replace(" | ", " ")) != case.split(" | ")
            ]
            path = Path(args.corpus_dir) / f"{args.split}.{lang}.gz"
            lines = gzip.open(path, "rt", encoding="utf-8").read().splitlines()
            began = time.perf_counter()
            cut = sum(len(sentences(split, line)) > 1 for line in lines)
            ms = (time.perf_counter() - began) * 1000 * 1000 / len(lines)
            pairs = [(lines[i].strip(), lines[i + 1].strip()) for i in range(0, len(lines) - 1, 2)]
            exact = sum(sentences(split, f"{a} {b}") == [a, b] for a, b in pairs)
            report[lang] = {
                "cases_wrong": wrong,
                "single_captions_cut": f"{cut}/{len(lines)}",
                "pairs_split_exactly": f"{exact}/{len(pairs)}",
                "ms_per_1000_captions": round(ms, 1),
            }
        result[name] = report
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
