"""Python API: `Translator.load(dir).translate(texts, ...)`.

All of translation after the Python-side batching runs in one TensorFlow graph
(`build_translate_function`): SentencePiece tokenization, truncation, encoding, greedy or beam
decoding in a `tf.while_loop`, detokenization. The SavedModel export wraps the very same
function, so the API and an export translate identically.
"""

from __future__ import annotations

import logging
import math
import operator
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import tensorflow as tf
from tqdm import tqdm

from translator.config import Config, load_config
from translator.decoding import beam_search, greedy_search
from translator.errors import ModelDirError
from translator.model import Seq2Seq, build_model
from translator.model_dir import find_checkpoint
from translator.pipeline import prepare_source
from translator.tokenizer import Tokenizers

log = logging.getLogger(__name__)

# Outputs may be this many pieces longer than ratio * source length (short sources need room).
LENGTH_MARGIN = 10
# translate() cuts sources to this many characters per `decode.max_source_length` piece before
# tokenizing: SentencePiece takes time quadratic in a long run of unknown characters (a
# 1,000,000-character word took ~50 s here). A piece covers at most 16 characters (SentencePiece's
# default), so a source this long has more than max_source_length pieces anyway unless it is
# mostly long runs of spaces or of unknown characters.
CHARS_PER_PIECE = 32


class Hypothesis(NamedTuple):
    """One translation: text, ranking score (length-penalised), raw log-probability and
    confidence (log-probability per output piece, EOS included)."""

    text: str
    score: float
    log_prob: float
    confidence: float


def build_translate_function(
    model: Seq2Seq,
    tokenizers: Tokenizers,
    beam_size: int = 1,
    n_best: int = 1,
    length_penalty: float = 0.0,
    max_length_ratio: float = 2.0,
    max_length: int = 256,
    max_source_length: int = 256,
) -> tf.types.experimental.GenericFunction:
    """A `tf.function` from a [batch] string tensor to translations, entirely in-graph.

    Returns a function whose output is a dict:
        translations [batch, n_best] string, scores / log_probs [batch, n_best] float32,
        lengths [batch, n_best] int32, source_lengths [batch] int32 (pieces before truncation).
    Empty or whitespace-only inputs translate to "" with score 0.
    """
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(
            f"need beam_size >= 1 and 1 <= n_best <= beam_size, "
            f"got beam_size={beam_size}, n_best={n_best}"
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def translate(texts: tf.Tensor) -> dict[str, tf.Tensor]:
        source, source_lengths = prepare_source(tokenizers.source, texts, max_source_length)
        kept = tf.minimum(source_lengths, max_source_length)
        limit = tf.cast(tf.math.ceil(max_length_ratio * tf.cast(kept, tf.float32)), tf.int32)
        max_lengths = tf.minimum(limit + LENGTH_MARGIN, max_length)  # [batch]
        state = model.encode(source, training=False)
        if beam_size == 1:
            result = greedy_search(
                model.decode_step, state, max_lengths, length_penalty=length_penalty
            )
        else:
            result = beam_search(
                model.decode_step, state, max_lengths, beam_size, length_penalty, n_best
            )
        batch = tf.shape(result.tokens)[0]
        n = tf.shape(result.tokens)[1]
        flat = tf.reshape(result.tokens, [batch * n, -1])
        flat_lengths = tf.reshape(result.lengths, [-1])
        ragged = tf.RaggedTensor.from_tensor(flat, lengths=flat_lengths)
        text = tf.reshape(tokenizers.target.detokenize(ragged), [batch, n])  # [batch, n_best]
        empty = tf.equal(source_lengths, 0)[:, None]  # [batch, 1]
        zeros = tf.zeros_like(result.scores)
        return {
            "translations": tf.where(empty, tf.constant(""), text),
            "scores": tf.where(empty, zeros, result.scores),
            "log_probs": tf.where(empty, zeros, result.log_probs),
            "lengths": tf.where(empty, tf.zeros_like(result.lengths), result.lengths),
            "source_lengths": source_lengths,
        }

    return translate


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


def _whole_number(name: str, value: object, minimum: int = 1) -> int:
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


class Translator:
    """A trained model with its tokenizers and decoding defaults.

    Example:
        >>> t = Translator.load("runs/multi30k_de_en")
        >>> t.translate(["Ein Mann fährt Fahrrad."])
        ['A man is riding a bike.']
    """

    def __init__(self, model: Seq2Seq, tokenizers: Tokenizers, config: Config):
        self.model = model
        self.tokenizers = tokenizers
        self.config = config
        self._functions: dict[tuple, object] = {}

    @classmethod
    def load(cls, directory: str | Path, checkpoint: str = "best") -> Translator:
        """Loads a trained model directory (config.yaml, SentencePiece models, checkpoints).

        A SavedModel export directory (a version directory, or a base directory whose highest
        version is used) loads too, as an `export.ExportedTranslator` with the same API.

        Args:
            directory: the training `output_dir`, or an export directory.
            checkpoint: "best" (the averaged checkpoint with `train.average_last`, else the
                best validation BLEU one, else the latest) or "latest"; ignored for an export.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelDirError(f"model directory not found: {directory}")
        from translator import export  # noqa: PLC0415  (export imports this module)

        if export.resolve_export_dir(directory) is not None:
            return export.ExportedTranslator.load(directory)
        if not (directory / "config.yaml").is_file():
            raise ModelDirError(f"{directory} is not a trained model (no config.yaml)")
        config = load_config(directory / "config.yaml")
        tokenizers = Tokenizers.load(directory)
        model = build_model(
            config.model, tokenizers.source_vocab_size, tokenizers.target_vocab_size
        )
        path = find_checkpoint(directory, checkpoint)
        tf.train.Checkpoint(model=model).restore(path).expect_partial()
        log.info("loaded %s", path)
        return cls(model, tokenizers, config)

    def translate_function(
        self, beam_size: int, n_best: int, length_penalty: float, max_length_ratio: float
    ):
        """The cached in-graph translate function for these decoding options."""
        key = (beam_size, n_best, float(length_penalty), float(max_length_ratio))
        if key not in self._functions:
            decode = self.config.decode
            self._functions[key] = build_translate_function(
                self.model,
                self.tokenizers,
                beam_size,
                n_best,
                length_penalty,
                max_length_ratio,
                decode.max_length,
                decode.max_source_length,
            )
        return self._functions[key]

    def _run(self, options: tuple, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """Runs the translate function for `options` on one batch of strings."""
        try:
            return self.translate_function(*options)(texts)
        except tf.errors.NotFoundError as exc:
            if "Sentencepiece" not in str(exc):
                raise
            # tf.random.set_seed (keras.utils.set_random_seed) clears TensorFlow's kernel cache,
            # which drops the SentencePiece resources: rebuild the tokenizers once and retry.
            self.tokenizers = Tokenizers(self.tokenizers.source_model, self.tokenizers.target_model)
            self._functions.clear()
            return self.translate_function(*options)(texts)

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
        beam_size = d.beam_size if beam_size is None else _whole_number("beam_size", beam_size)
        if n_best is None:
            n_best = d.n_best if d.n_best <= beam_size else 1
        else:
            n_best = _whole_number("n_best", n_best)
        length_penalty = d.length_penalty if length_penalty is None else float(length_penalty)
        ratio = d.max_length_ratio if max_length_ratio is None else float(max_length_ratio)
        batch_size = d.batch_size if batch_size is None else _whole_number("batch_size", batch_size)
        if not 1 <= n_best <= beam_size:
            raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
        if length_penalty < 0 or not math.isfinite(length_penalty):
            raise ValueError(f"length_penalty must be a finite number >= 0, got {length_penalty}")
        if ratio <= 0 or not math.isfinite(ratio):
            raise ValueError(f"max_length_ratio must be a finite number > 0, got {ratio}")

        results: list[list[Hypothesis]] = [[Hypothesis("", 0.0, 0.0, 0.0)] for _ in texts]
        todo = [i for i, t in enumerate(texts) if t.strip()]
        # Longest first, so each batch pads little; results are put back in input order.
        todo.sort(key=lambda i: -len(texts[i]))
        max_chars = CHARS_PER_PIECE * d.max_source_length
        truncated = 0
        batches = range(0, len(todo), batch_size)
        for start in tqdm(batches, disable=not progress, file=sys.stderr, unit="batch"):
            index = todo[start : start + batch_size]
            batch = [texts[i][:max_chars] for i in index]
            out = self._run(
                (beam_size, n_best, length_penalty, ratio), tf.constant(batch, tf.string)
            )
            too_long = out["source_lengths"].numpy() > d.max_source_length
            truncated += sum(
                bool(long) or len(texts[i]) > max_chars
                for long, i in zip(too_long, index, strict=True)
            )
            strings = out["translations"].numpy()
            scores, log_probs = out["scores"].numpy(), out["log_probs"].numpy()
            lengths = out["lengths"].numpy()
            for row, i in enumerate(index):
                results[i] = [
                    Hypothesis(
                        strings[row, k].decode("utf-8"),
                        float(scores[row, k]),
                        float(log_probs[row, k]),
                        float(log_probs[row, k]) / (int(lengths[row, k]) + 1),
                    )
                    for k in range(strings.shape[1])
                ]
        if truncated:
            log.warning(
                "%d source sentence(s) longer than %d pieces were truncated "
                "(decode.max_source_length)",
                truncated,
                d.max_source_length,
            )
        if return_scores or n_best > 1:
            return results
        return [hyps[0].text for hyps in results]
