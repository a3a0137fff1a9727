"""What every translator shares, whether it runs a Keras model or a loaded export.

The decoding options, a hypothesis, the checks on `translate()`'s arguments, and `translate()`
itself: the Python side of translation (defaults, splitting inputs into sentences and joining
their translations (`splitting.py`, `join_rows`), batching longest first, the character cut,
truncation warnings, putting results back in input order) over one abstract
`translate_function(beam_size, n_best, length_penalty, max_length_ratio)`. `api.Translator`
builds that function from a Keras model; `export.loaded.ExportedTranslator` picks it among the
functions baked into a SavedModel. No TensorFlow is imported until a batch is translated.
"""

from __future__ import annotations

import abc
import functools
import logging
import math
import operator
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from tqdm import tqdm

from translator.splitting import Splitter

if TYPE_CHECKING:
    from translator.config import Config, DecodeConfig

# translate() cuts sources to this many characters per `decode.max_source_length` piece before
# tokenizing: SentencePiece takes time quadratic in a long run of unknown characters (a
# 1,000,000-character word took ~50 s here). A piece covers at most 16 characters (SentencePiece's
# default), so a source this long has more than max_source_length pieces anyway unless it is
# mostly long runs of spaces or of unknown characters.
CHARS_PER_PIECE = 32

# A translate function maps a [batch] string tensor to a dict of tensors: translations
# [batch, n_best] string, scores / log_probs [batch, n_best] float32, lengths [batch, n_best]
# int32 and source_lengths [batch] int32 (pieces before truncation).
TranslateFunction = Callable[[Any], Mapping[str, Any]]


class DecodeOptions(NamedTuple):
    """Decoding options baked into one exported signature (or asked of the API)."""

    beam_size: int
    n_best: int
    length_penalty: float
    max_length_ratio: float


class Hypothesis(NamedTuple):
    """One translation: text, ranking score (length-penalised), raw log-probability and
    confidence (log-probability per output piece, EOS included)."""

    text: str
    score: float
    log_prob: float
    confidence: float


def check_texts(texts: object) -> list[str]:
    """Validates the `texts` argument of translate(); returns it as a list.

    Raises:
        TypeError: `texts` is not a list (or other sequence) of `str`, e.g. a bare string.
        ValueError: an item is not valid Unicode text (it holds an unpaired surrogate).
    """
    if isinstance(texts, (str, bytes, bytearray, memoryview)):
        raise TypeError(
            "translate() expects a list of strings, got a single "
            f"{type(texts).__name__}; wrap it in a list: translate([text])"
        )
    if texts is None or not isinstance(texts, Sequence):
        raise TypeError(f"translate() expects a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"translate() expects strings; item {i} is {type(text).__name__}")
        if not text.isascii():  # only non-ASCII text can hold a surrogate
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"translate(): item {i} is not valid Unicode text "
                    f"(unpaired surrogate at character {exc.start})"
                ) from None
    return list(texts)


def whole_number(name: str, value: object, minimum: int = 1) -> int:
    """`value` as an int >= minimum; a float, string or bool is a TypeError, not truncated."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def resolve_options(
    decode: DecodeConfig,
    beam_size: int | None = None,
    n_best: int | None = None,
    length_penalty: float | None = None,
    max_length_ratio: float | None = None,
) -> DecodeOptions:
    """The decoding options translate() runs with: each one given, or the config's default.

    The config's `n_best` only applies when it fits the beam size; a given `n_best` must.

    Raises:
        TypeError: `beam_size` or `n_best` is not an integer.
        ValueError: an option is out of range.
    """
    d = decode
    beam_size = d.beam_size if beam_size is None else whole_number("beam_size", beam_size)
    if n_best is None:
        n_best = d.n_best if d.n_best <= beam_size else 1
    else:
        n_best = whole_number("n_best", n_best)
    length_penalty = d.length_penalty if length_penalty is None else float(length_penalty)
    ratio = d.max_length_ratio if max_length_ratio is None else float(max_length_ratio)
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    if length_penalty < 0 or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number >= 0, got {length_penalty}")
    if ratio <= 0 or not math.isfinite(ratio):
        raise ValueError(f"max_length_ratio must be a finite number > 0, got {ratio}")
    return DecodeOptions(beam_size, n_best, length_penalty, ratio)


def output_rows(out: Mapping[str, Any]) -> list[dict[str, np.ndarray]]:
    """A translate function's output (a dict of [batch, ...] tensors) as one dict per input."""
    arrays = {k: v.numpy() if hasattr(v, "numpy") else np.asarray(v) for k, v in out.items()}
    size = len(next(iter(arrays.values())))
    return [{k: v[row] for k, v in arrays.items()} for row in range(size)]


def row_hypotheses(row: Mapping[str, Any]) -> list[Hypothesis]:
    """The `Hypothesis` list of one output row (translations, scores, log_probs, lengths
    [n_best]), best first."""
    strings, scores = row["translations"], row["scores"]
    log_probs, lengths = row["log_probs"], row["lengths"]
    return [
        Hypothesis(
            strings[k].decode("utf-8") if isinstance(strings[k], bytes) else str(strings[k]),
            float(scores[k]),
            float(log_probs[k]),
            float(log_probs[k]) / (int(lengths[k]) + 1),
        )
        for k in range(len(strings))
    ]


def hypotheses(out: Mapping[str, Any]) -> list[list[Hypothesis]]:
    """One list of `Hypothesis` per row of a translate function's output, best first."""
    return [row_hypotheses(row) for row in output_rows(out)]


_TEXT_KEYS = ("translations", "translation")  # the exported signatures' names, n-best or best
_SCORE_KEYS = ("scores", "score")


def join_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One output row for an input translated as several units (sentences, chunks).

    Hypothesis k of the input joins hypothesis k of every unit: the texts with single spaces,
    and the scores, log-probabilities and source lengths summed. The first is the best joined
    translation; the others are alternatives in order of score, not the k-th best combinations
    (finding those would need a search over combinations). Output `lengths` are summed plus one
    per inner end of sentence, so `log_prob / (length + 1)` stays the log-probability per
    decoded piece (`Hypothesis.confidence`). A slot beam search could not fill (score -inf)
    for any unit stays unfilled: "" with score -inf.

    Works on the rows of a decode function (`translations`, `scores`, `log_probs`, `lengths`
    [n_best], `source_lengths`) and of the exported signatures (`translation`, `score`).
    """
    if len(rows) == 1:
        return dict(rows[0])
    joined: dict[str, Any] = {}
    for key in rows[0]:
        values = [np.asarray(row[key]) for row in rows]
        joined[key] = _join_texts(values) if key in _TEXT_KEYS else np.sum(values, axis=0)
    if "lengths" in joined:
        joined["lengths"] = joined["lengths"] + (len(rows) - 1)
    for score_key, text_key in zip(_SCORE_KEYS, _TEXT_KEYS, strict=True):
        if score_key in joined and text_key in joined:
            unfilled = ~np.isfinite(joined[score_key])
            empty = b"" if isinstance(joined[text_key].flat[0], bytes) else ""
            joined[text_key] = np.where(unfilled, np.asarray(empty, object), joined[text_key])
    return joined


def _join_texts(values: list[np.ndarray]) -> np.ndarray:
    """Slot by slot, the non-empty texts of the units joined with spaces (bytes or str)."""
    cells = [np.atleast_1d(v) for v in values]
    joined = np.empty(cells[0].shape, object)
    for k in range(len(joined)):
        parts = [cell[k] for cell in cells]
        space = b" " if isinstance(parts[0], bytes) else " "
        joined[k] = space.join(p for p in parts if p)
    return joined.reshape(np.shape(values[0]))


class BaseTranslator(abc.ABC):
    """`translate()` over a translate function; subclasses say where that function comes from.

    Attributes:
        config: the model's configuration; its `decode` section gives translate()'s defaults.
    """

    # translate()'s truncation warnings; each subclass logs under its own module's name.
    log = logging.getLogger(__name__)

    def __init__(self, config: Config):
        self.config = config

    @abc.abstractmethod
    def translate_function(
        self, beam_size: int, n_best: int, length_penalty: float, max_length_ratio: float
    ) -> TranslateFunction:
        """The translate function for these decoding options (see `TranslateFunction`).

        Raises:
            ValueError: this translator cannot decode with these options.
        """

    def source_sentencepiece(self) -> bytes | None:
        """The source SentencePiece model (bytes) that over-long sentences are chunked with;
        None: they are not chunked, only split into sentences."""
        return None

    @functools.cached_property
    def splitter(self) -> Splitter:
        """Cuts inputs into sentences and over-long sentences into chunks (`decode.split`)."""
        limit = self.config.decode.max_source_length
        return Splitter(
            self.config.data.source_lang,
            limit,
            self.source_sentencepiece(),
            max_word_chars=CHARS_PER_PIECE * limit,
        )

    def _run(self, options: DecodeOptions, batch: list[str]) -> Mapping[str, Any]:
        """Runs the translate function for `options` on one batch of source strings."""
        import tensorflow as tf  # noqa: PLC0415  (keeps this module free of TensorFlow at import)

        return self.translate_function(*options)(tf.constant(batch, tf.string))

    def translate(
        self,
        texts: Sequence[str],
        beam_size: int | None = None,
        length_penalty: float | None = None,
        n_best: int | None = None,
        max_length_ratio: float | None = None,
        return_scores: bool = False,
        batch_size: int | None = None,
        progress: bool = False,
        split: bool | None = None,
    ) -> list[str] | list[list[Hypothesis]]:
        """Translates a list of texts, keeping their order.

        Options default to the config's `decode` section. With `split` (default
        `decode.split`, on) each text is cut into sentences, and a sentence longer than
        `decode.max_source_length` pieces into chunks at word boundaries (`splitting.Splitter`);
        the units of all texts are translated together, and each text's translations are
        joined with spaces (`join_rows`: scores and log-probabilities add up; hypothesis k of
        an n-best list joins hypothesis k of every unit). Without it each text is translated
        as one sequence, and one longer than `decode.max_source_length` pieces is truncated to
        that many pieces (a warning says how many). Either way a source longer than
        `CHARS_PER_PIECE * decode.max_source_length` characters is cut to that many characters
        before tokenizing, which bounds tokenization time, and empty and whitespace-only
        inputs give "" without running the model. Any number of texts may be passed: the
        units are translated `batch_size` at a time.

        Raises:
            TypeError: `texts` is not a list of strings (a bare string included), an integer
                option is not an integer, or `split` is not a bool.
            ValueError: an item is not valid Unicode, or an option is out of range.

        Returns:
            One string per input, or, with `return_scores=True` or `n_best > 1`, one list of
            `Hypothesis` per input, best first.
        """
        texts = check_texts(texts)
        d = self.config.decode
        options = resolve_options(d, beam_size, n_best, length_penalty, max_length_ratio)
        batch_size = d.batch_size if batch_size is None else whole_number("batch_size", batch_size)
        if split is None:
            split = d.split
        elif not isinstance(split, bool):
            raise TypeError(f"split must be True or False, got {type(split).__name__}")

        if split:
            segments = self.splitter.segment(texts)
            rows = self._translate_units(segments.units, options, batch_size, progress)
            rows = [join_rows(group) for group in segments.regroup(rows)]
            if segments.chunked:
                self.log.info(
                    "%d sentence(s) longer than %d pieces were cut into chunks at word "
                    "boundaries (decode.max_source_length)",
                    segments.chunked,
                    d.max_source_length,
                )
        else:
            rows = self._translate_units(texts, options, batch_size, progress)
        results = [row_hypotheses(row) for row in rows]
        if return_scores or options.n_best > 1:
            return results
        return [hyps[0].text for hyps in results]

    def _translate_units(
        self, texts: list[str], options: DecodeOptions, batch_size: int, progress: bool
    ) -> list[dict[str, Any]]:
        """One output row per text (see `output_rows`), translated `batch_size` at a time,
        longest first; a blank text gets an empty translation with score 0 without the model."""
        d = self.config.decode
        blank = {
            "translations": np.array([b""], object),
            "scores": np.zeros(1, np.float32),
            "log_probs": np.zeros(1, np.float32),
            "lengths": np.zeros(1, np.int32),
            "source_lengths": np.int32(0),
        }
        rows: list[dict[str, Any]] = [blank for _ in texts]
        todo = [i for i, t in enumerate(texts) if t.strip()]
        # Longest first, so each batch pads little; results are put back in input order.
        todo.sort(key=lambda i: -len(texts[i]))
        max_chars = CHARS_PER_PIECE * d.max_source_length
        truncated = 0
        batches = range(0, len(todo), batch_size)
        for start in tqdm(batches, disable=not progress, file=sys.stderr, unit="batch"):
            index = todo[start : start + batch_size]
            out = self._run(options, [texts[i][:max_chars] for i in index])
            too_long = out["source_lengths"].numpy() > d.max_source_length
            truncated += sum(
                bool(long) or len(texts[i]) > max_chars
                for long, i in zip(too_long, index, strict=True)
            )
            for i, row in zip(index, output_rows(out), strict=True):
                rows[i] = row
        if truncated:
            self.log.warning(
                "%d source sentence(s) longer than %d pieces were truncated "
                "(decode.max_source_length)",
                truncated,
                d.max_source_length,
            )
        return rows
