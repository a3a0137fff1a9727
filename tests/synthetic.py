"""A synthetic translation task for tests: word mapping plus reordering, generated from a seed.

Source sentences follow "DET ADJ NOUN VERB DET ADJ NOUN" in an invented language; the target
maps every word through a fixed dictionary and reorders: adjectives follow their nouns and the
verb moves to the end. A model has to learn both the lexicon and the reordering.

The shifted task (SHIFTED_NOUNS, for fine-tuning) is the same grammar with the nouns'
translations permuted: every word of either side is a word of the original task.
"""

from __future__ import annotations

import itertools
import random

DETS = {"da": "the", "ena": "a"}
ADJS = {"rosso": "red", "blau": "blue", "grun": "green", "gelo": "yellow"}
NOUNS = {"hunto": "dog", "katu": "cat", "vogal": "bird", "fisko": "fish", "pferd": "horse"}
VERBS = {"sieht": "sees", "jagt": "chases", "mag": "likes", "ruft": "calls"}
# The nouns' translations rotated by one: hunto -> cat, katu -> bird, ..., pferd -> dog.
SHIFTED_NOUNS = dict(zip(NOUNS, [*list(NOUNS.values())[1:], list(NOUNS.values())[0]], strict=True))


def translate(source: str, nouns: dict[str, str] = NOUNS) -> str:
    """The reference translation of a source sentence of the grammar (with `nouns`)."""
    d1, a1, n1, v, d2, a2, n2 = source.split()
    words = [DETS[d1], nouns[n1], ADJS[a1], DETS[d2], nouns[n2], ADJS[a2], VERBS[v]]
    return " ".join(words)


def all_sources() -> list[str]:
    """Every sentence of the grammar (2*4*5*4*2*4*5 = 12,800)."""
    return [
        " ".join(words) for words in itertools.product(DETS, ADJS, NOUNS, VERBS, DETS, ADJS, NOUNS)
    ]


def split(
    n_train: int, n_test: int, seed: int = 0, nouns: dict[str, str] = NOUNS
) -> tuple[list[tuple[str, str]], ...]:
    """Disjoint random train and test pairs (translated with `nouns`)."""
    sources = all_sources()
    random.Random(seed).shuffle(sources)
    pairs = [(s, translate(s, nouns)) for s in sources[: n_train + n_test]]
    return pairs[:n_train], pairs[n_train:]


def write_pairs(pairs: list[tuple[str, str]], source_path, target_path) -> None:
    """Writes pairs as two aligned plain-text files."""
    source_path.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    target_path.write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
