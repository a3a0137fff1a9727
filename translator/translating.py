"""What every translator shares, whether it runs a Keras model or a loaded export.

The decoding options, a hypothesis, the checks on `translate()`'s arguments, and `translate()`
itself: the Python side of translation (defaults, batching longest first, the character cut,
truncation warnings, putting results back in input order) over one abstract
`translate_function(beam_size, n_best, length_penalty, max_length_ratio)`. `api.Translator`
builds that function from a Keras model; `export.loaded.ExportedTranslator` picks it among the
functions baked into a SavedModel. No TensorFlow is imported until a batch is translated.
"""

from __future__ import annotations

import abc
import logging
import math
import operator
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from tqdm import tqdm

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


def hypotheses(out: Mapping[str, Any]) -> list[list[Hypothesis]]:
    """One list of `Hypothesis` per row of a translate function's output, best first."""
    strings = out["translations"].numpy()  # [batch, n_best]
    scores, log_probs = out["scores"].numpy(), out["log_probs"].numpy()
    lengths = out["lengths"].numpy()
    return [
        [
            Hypothesis(
                strings[row, k].decode("utf-8"),
                float(scores[row, k]),
                float(log_probs[row, k]),
                float(log_probs[row, k]) / (int(lengths[row, k]) + 1),
            )
            for k in range(strings.shape[1])
        ]
        for row in range(strings.shape[0])
    ]


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
    ) -> list[str] | list[list[Hypothesis]]:
        """Translates a list of sentences, keeping their order.

        Options default to the config's `decode` section. Empty and whitespace-only inputs give
        "" without running the model. Sources longer than `decode.max_source_length` pieces are
        truncated to that many pieces (a warning says how many); a source longer than
        `CHARS_PER_PIECE * decode.max_source_length` characters is first cut to that many
        characters, which bounds tokenization time. Any number of sentences may be passed: they
        are translated `batch_size` at a time.

        Raises:
            TypeError: `texts` is not a list of strings (a bare string included), or an integer
                option is not an integer.
            ValueError: an item is not valid Unicode, or an option is out of range.

        Returns:
            One string per input, or, with `return_scores=True` or `n_best > 1`, one list of
            `Hypothesis` per input, best first.
        """
        texts = check_texts(texts)
        d = self.config.decode
        options = resolve_options(d, beam_size, n_best, length_penalty, max_length_ratio)
        batch_size = d.batch_size if batch_size is None else whole_number("batch_size", batch_size)

        results: list[list[Hypothesis]] = [[Hypothesis("", 0.0, 0.0, 0.0)] for _ in texts]
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
            for i, hyps in zip(index, hypotheses(out), strict=True):
                results[i] = hyps
        if truncated:
            self.log.warning(
                "%d source sentence(s) longer than %d pieces were truncated "
                "(decode.max_source_length)",
                truncated,
                d.max_source_length,
            )
        if return_scores or options.n_best > 1:
            return results
        return [hyps[0].text for hyps in results]
