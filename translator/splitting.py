"""Inputs cut into the units a model translates: sentences, and chunks of over-long sentences.

An LSTM trained on single sentences translates a line of several sentences badly, and a source
longer than `decode.max_source_length` pieces would be truncated. `Splitter.segment(texts)`
cuts every input into sentences with sentencex (Wikimedia's rule-based segmenter: no data to
download, English, German, French, Czech and some 300 other languages through fallbacks, and
lossless: its segments concatenate back to the input), then every sentence still longer than
the piece limit into chunks at whitespace, counting pieces with the model's own SentencePiece
model; only a single word over the limit is cut between two of its pieces. `Segments.regroup`
puts the units' results back together per input; `translating.join_rows` joins them.

This runs in Python, before the translate function, not inside the exported graph: sentencex is
not a TensorFlow op, and a hand-written regex in the graph would split differently from it.
The Python API (`translating.BaseTranslator`, for a model or an export) and `translator serve`
split; TensorFlow Serving's own binary, sent the same export, translates each input whole.
No TensorFlow is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import sentencepiece as spm
import sentencex

T = TypeVar("T")


@dataclass(frozen=True)
class Segments:
    """The units of a list of inputs, in input order, and how many belong to each input.

    Attributes:
        units: every unit of every input; a blank input is one blank unit (it translates to ""
            as before, without running the model).
        counts: units per input (>= 1).
        chunked: sentences that were longer than the piece limit and were cut into chunks.
    """

    units: list[str]
    counts: list[int]
    chunked: int = 0

    def regroup(self, results: Sequence[T]) -> list[list[T]]:
        """The results of `units` (one each, in order) as one list per input."""
        if len(results) != len(self.units):
            raise ValueError(f"expected {len(self.units)} results, got {len(results)}")
        groups, start = [], 0
        for count in self.counts:
            groups.append(list(results[start : start + count]))
            start += count
        return groups


class Splitter:
    """Cuts source texts into sentences, and sentences over `max_pieces` into chunks.

    Args:
        language: the source language code (`data.source_lang`); sentencex falls back to
            related rules, then to generic ones, for a code it has no rules for.
        max_pieces: the most SentencePiece pieces a unit may have (`decode.max_source_length`).
        sentencepiece_model: the source SentencePiece model (bytes) the pieces are counted with;
            None: sentences are not chunked.
        max_word_chars: a whitespace-free run longer than this is first cut into runs of this
            many characters, which bounds the time SentencePiece takes on it.
    """

    def __init__(
        self,
        language: str,
        max_pieces: int,
        sentencepiece_model: bytes | None = None,
        max_word_chars: int | None = None,
    ):
        if max_pieces < 1:
            raise ValueError(f"max_pieces must be >= 1, got {max_pieces}")
        self.language = language
        self.max_pieces = max_pieces
        self.max_word_chars = max_word_chars or 32 * max_pieces
        self._processor = None
        if sentencepiece_model is not None:
            self._processor = spm.SentencePieceProcessor()
            self._processor.LoadFromSerializedProto(sentencepiece_model)

    def sentences(self, text: str) -> list[str]:
        """The sentences of `text`, stripped; none for a blank text."""
        return [s.strip() for s in sentencex.segment(self.language, text) if s.strip()]

    def chunks(self, sentence: str) -> list[str]:
        """`sentence` as chunks of at most `max_pieces` pieces, cut at whitespace.

        The chunks joined with single spaces give the sentence back with its runs of whitespace
        collapsed (a word cut between its pieces, the rare exception, comes back split in two).
        """
        sp = self._processor
        if sp is None:
            return [sentence]
        if len(sentence) <= self.max_word_chars:  # short enough to tokenize whole, quickly
            if len(sp.EncodeAsIds(sentence)) <= self.max_pieces:
                return [sentence]
        words = [part for word in sentence.split() for part in _cut(word, self.max_word_chars)]
        counts = [len(ids) for ids in sp.EncodeAsIds(words)]
        if sum(counts) <= self.max_pieces:
            return [" ".join(words)]
        chunks: list[str] = []
        current: list[str] = []
        size = 0
        for word, count in zip(words, counts, strict=True):
            if size + count > self.max_pieces and current:
                chunks.append(" ".join(current))
                current, size = [], 0
            if count > self.max_pieces:  # one word over the limit: cut between its pieces
                chunks.extend(self._cut_word(word))
                continue
            current.append(word)
            size += count
        if current:
            chunks.append(" ".join(current))
        return chunks

    def _cut_word(self, word: str) -> list[str]:
        """A word of more than `max_pieces` pieces as parts that each tokenize, alone, to at
        most that many (a part starts a new word, so it may take more pieces than in place)."""
        sp = self._processor
        pieces = sp.EncodeAsPieces(word)
        parts, start = [], 0
        while start < len(pieces):
            n = min(self.max_pieces, len(pieces) - start)
            part = sp.DecodePieces(pieces[start : start + n])
            while n > 1 and len(sp.EncodeAsIds(part)) > self.max_pieces:
                n -= 1
                part = sp.DecodePieces(pieces[start : start + n])
            parts.append(part)
            start += n
        return parts

    def split(self, text: str) -> list[str]:
        """The units of one text: its sentences, chunked; `[text]` for a blank text."""
        return self.segment([text]).units

    def segment(self, texts: Sequence[str]) -> Segments:
        """The units of every text, in order, with the count per text."""
        units: list[str] = []
        counts: list[int] = []
        chunked = 0
        for text in texts:
            pieces = [self.chunks(s) for s in self.sentences(text)]
            chunked += sum(len(p) > 1 for p in pieces)
            mine = [chunk for p in pieces for chunk in p] or [text]
            units.extend(mine)
            counts.append(len(mine))
        return Segments(units, counts, chunked)


def _cut(word: str, size: int) -> list[str]:
    return [word[i : i + size] for i in range(0, len(word), size)] or [word]
