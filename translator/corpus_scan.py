"""One streaming pass over a training corpus: validation, counts, and a bounded random sample.

The pass reads every pair once (blocks of raw pairs from `translator.corpus_files` or a TFDS
split), so a bad file fails here with the reader's message (file and line) before anything is
trained or written. It counts the pairs kept and the empty pairs skipped (normalisation as in
corpus_files), and draws a uniform sample of at most `size` kept pairs (reservoir sampling,
Li's "Algorithm L": a random draw per replaced pair only) on which SentencePiece trains, so
neither memory nor tokenizer training grows with the corpus. A corpus of at most `size` pairs is
its own sample, in corpus order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from translator.corpus_files import Block, ParallelCorpus, is_blank, normalise
from translator.errors import DataError


@dataclass(frozen=True)
class CorpusScan:
    """What a pass over a corpus found.

    Attributes:
        pairs: pairs with both sides non-empty (what training reads per epoch, before the
            length filter).
        skipped_empty: pairs skipped because a side was empty after normalisation.
        sample: at most `size` of the kept pairs, normalised, in corpus order (all of them when
            the corpus is that small).
        origin: the corpus, named as in messages.
    """

    pairs: int
    skipped_empty: int
    sample: ParallelCorpus
    origin: str


class _Reservoir:
    """A uniform random sample of at most `size` items of a stream (Algorithm L)."""

    def __init__(self, size: int, seed: int):
        self.size, self.rng = size, random.Random(seed)
        self.items: list[tuple[int, str, str]] = []  # (index in the stream, source, target)
        self.weight = 1.0
        self.next = -1  # index of the next item to take once the reservoir is full
        if size > 0:
            self._advance(first=True)

    def _advance(self, first: bool = False) -> None:
        self.weight *= math.exp(math.log(self._uniform()) / self.size)
        gap = 0
        if self.weight < 1.0:
            gap = math.floor(math.log(self._uniform()) / math.log1p(-self.weight))
        self.next = (self.size if first else self.next + 1) + gap

    def _uniform(self) -> float:
        return self.rng.random() or 1e-300  # never log(0)

    def wants(self, index: int) -> bool:
        """Whether item `index` (the items come in order) goes into the sample."""
        return index < self.size or index == self.next

    def add(self, index: int, source: str, target: str) -> None:
        """Adds item `index` (only call when `wants(index)`)."""
        item = (index, normalise(source), normalise(target))
        if len(self.items) < self.size:
            self.items.append(item)
            return
        self.items[self.rng.randrange(self.size)] = item
        self._advance()

    def sample(self) -> tuple[list[str], list[str]]:
        items = sorted(self.items)
        return [s for _, s, _ in items], [t for _, _, t in items]


def scan(blocks: Iterable[Block], origin: str, size: int, seed: int = 0) -> CorpusScan:
    """Reads `blocks` to their end: counts, skips empty pairs, samples at most `size` pairs.

    Raises:
        DataError: the reader's errors; no pair is left.
    """
    reservoir = _Reservoir(size, seed)
    kept = skipped = 0
    for sources, targets in blocks:
        if not any(map(is_blank, sources)) and not any(map(is_blank, targets)):
            # The usual block: every pair is kept; visit only the ones the sample takes.
            end = kept + len(sources)
            for index in range(kept, min(end, size)):  # filling the reservoir
                reservoir.add(index, sources[index - kept], targets[index - kept])
            while kept <= reservoir.next < end:  # `add` moves `next` on
                index = reservoir.next
                reservoir.add(index, sources[index - kept], targets[index - kept])
            kept = end
            continue
        for src, tgt in zip(sources, targets, strict=True):
            if is_blank(src) or is_blank(tgt):
                skipped += 1
                continue
            if reservoir.wants(kept):
                reservoir.add(kept, src, tgt)
            kept += 1
    if not kept:
        raise DataError(f"no sentence pairs in {origin} ({skipped} skipped with an empty side)")
    sources, targets = reservoir.sample()
    return CorpusScan(kept, skipped, ParallelCorpus(sources, targets, skipped, origin), origin)
