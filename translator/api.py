"""Python API: `Translator.load(dir).translate(texts, ...)`.

`Translator` is a trained Keras model with its tokenizers. All of translation after the
Python-side batching (`translating.BaseTranslator.translate`) runs in one TensorFlow graph
(`build_translate_function`): SentencePiece tokenization, truncation, encoding, greedy or beam
decoding in a `tf.while_loop`, detokenization. The SavedModel export wraps the very same
function, so the API and an export translate identically. `Translator.load` also opens an
export directory, as an `export.loaded.ExportedTranslator` with the same `translate()`, and a
list of training directories as one ensemble (`ensemble.Ensemble`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from translator.config import Config, load_config
from translator.constants import BEAM_COMPACT, FLOAT32_BELOW_ROWS, FLOAT32_LEAN, GREEDY_COMPACT
from translator.decoding import DecodeResult, beam_search, greedy_search
from translator.ensemble import Ensemble, Member, check_members
from translator.errors import EnsembleError, ModelDirError
from translator.export.layout import resolve_export_dir
from translator.export.loaded import ExportedTranslator
from translator.model import Seq2Seq, build_model
from translator.model_dir import CONFIG_FILE, find_checkpoint, is_model_dir
from translator.pipeline import prepare_source
from translator.precision import (
    computing_in_float32,
    dtype_policy,
    inference_precision,
    policy_name,
)
from translator.tokenizer import Tokenizers
from translator.translating import (
    CHARS_PER_PIECE,
    BaseTranslator,
    DecodeOptions,
    Hypothesis,
    check_texts,
)

log = logging.getLogger(__name__)

# Outputs may be this many pieces longer than ratio * source length (short sources need room).
LENGTH_MARGIN = 10


def build_translate_function(
    model: Seq2Seq | Ensemble,
    tokenizers: Tokenizers,
    beam_size: int = 1,
    n_best: int = 1,
    length_penalty: float = 0.0,
    max_length_ratio: float = 2.0,
    max_length: int = 256,
    max_source_length: int = 256,
    float32_below: int = 0,
    compact: float | None = None,
    lean: bool | None = None,
) -> tf.types.experimental.GenericFunction:
    """A `tf.function` from a [batch] string tensor to translations, entirely in-graph.

    A bfloat16 `model` with `float32_below` > 0 encodes and decodes a batch of fewer than that
    many rows (sentences x beam size) in float32 instead, exactly as the float32 model would
    (`precision.computing_in_float32`; both paths are in the graph, chosen per call).
    A `lean` search (None: always in bfloat16, `FLOAT32_LEAN` in float32; never for an
    ensemble) works from logits (`logits=True`) and drops finished sentences from its loop once
    at most `compact` of them are still searched (`decoding`'s `greedy_search` and
    `beam_search`; 0: never; None: `GREEDY_COMPACT` and `BEAM_COMPACT`); otherwise the search
    keeps the log-softmax and every row, as before this option (bitwise in float32).

    Returns a function whose output is a dict:
        translations [batch, n_best] string, scores / log_probs [batch, n_best] float32,
        lengths [batch, n_best] int32, source_lengths [batch] int32 (pieces before truncation).
    Empty or whitespace-only inputs translate to "" with score 0. `model` is one `Seq2Seq` or
    an `ensemble.Ensemble` (the same `encode` and `decode_step`).
    """
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(
            f"need beam_size >= 1 and 1 <= n_best <= beam_size, "
            f"got beam_size={beam_size}, n_best={n_best}"
        )

    # No AutoGraph: every loop is an explicit tf.while_loop (translator/decoding.py), and
    # converting the model's source costs seconds at each process's first translation.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def translate(texts: tf.Tensor) -> dict[str, tf.Tensor]:
        source, source_lengths = prepare_source(tokenizers.source, texts, max_source_length)
        kept = tf.minimum(source_lengths, max_source_length)
        limit = tf.cast(tf.math.ceil(max_length_ratio * tf.cast(kept, tf.float32)), tf.int32)
        max_lengths = tf.minimum(limit + LENGTH_MARGIN, max_length)  # [batch]

        def search() -> DecodeResult:
            state = model.encode(source, training=False)
            options = {}
            lean_search = _lean(model, lean)
            if lean_search:
                default = GREEDY_COMPACT if beam_size == 1 else BEAM_COMPACT
                options = {"logits": True, "compact": default if compact is None else compact}
                step, state = model.search_step(state, beam_size, logits=True, fixed_in_state=True)
            else:
                step, state = model.search_step(state, beam_size)
            if beam_size == 1:
                return greedy_search(
                    step, state, max_lengths, length_penalty=length_penalty, **options
                )
            if lean_search:
                options.update(fixed=True)  # the fixed state is the loop state's second part
            return beam_search(
                step, state, max_lengths, beam_size, length_penalty, n_best, **options
            )

        def search_in_float32() -> DecodeResult:
            with computing_in_float32(model):
                return search()

        if float32_below > 0 and _bfloat16(model):
            rows = tf.shape(source)[0] * beam_size
            result = tf.cond(rows < float32_below, search_in_float32, search)
        else:
            result = search()
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


class Translator(BaseTranslator):
    """A trained model (or an ensemble of them) with its tokenizers and decoding defaults.

    In bfloat16, a batch of fewer than `float32_below` rows (sentences x beam size; default
    `FLOAT32_BELOW_ROWS`, 0: never) is translated in float32, where bfloat16 does not pay.
    `lean`: whether the searches work from logits and drop finished sentences (None: the
    default of `build_translate_function`).

    Example:
        >>> t = Translator.load("runs/multi30k_de_en")
        >>> t.translate(["Ein Mann fährt Fahrrad."])
        ['A man is riding a bike.']
    """

    log = log  # translate()'s truncation warnings are logged as translator.api

    def __init__(
        self,
        model: Seq2Seq | Ensemble,
        tokenizers: Tokenizers,
        config: Config,
        model_dirs: Sequence[Path] = (),
        float32_below: int = FLOAT32_BELOW_ROWS,
        lean: bool | None = None,
    ):
        super().__init__(config)
        self.model = model
        self.tokenizers = tokenizers
        self.model_dirs = tuple(model_dirs)  # where the model (each member) was loaded from
        # bfloat16 only: batches of fewer rows decode in float32 (`build_translate_function`)
        self.float32_below = float32_below
        # searches from logits without finished sentences (`build_translate_function`'s `lean`)
        self.lean = lean
        self._functions: dict[DecodeOptions, tf.types.experimental.GenericFunction] = {}

    @property
    def precision(self) -> str:
        """ "bfloat16" or "float32": the dtype the model computes in."""
        return "bfloat16" if self.model.compute_dtype == "bfloat16" else "float32"

    @classmethod
    def load(
        cls, directory: str | Path | Sequence[str | Path], checkpoint: str = "best"
    ) -> Translator | ExportedTranslator:
        """Loads a trained model directory, a SavedModel export with the same `translate()`, or
        an ensemble of trained model directories.

        An export directory (a version directory, or a base directory whose highest version is
        used) loads as an `export.loaded.ExportedTranslator`; a list of two or more directories
        as `from_model_dirs` (an ensemble); anything else as `from_model_dir`.

        Args:
            directory: the training `output_dir`, an export directory, or a list of training
                directories.
            checkpoint: "best" (the averaged checkpoint with `train.average_last`, else the
                best validation BLEU one, else the latest) or "latest"; ignored for an export.
        """
        if not isinstance(directory, (str, os.PathLike)):
            directories = list(directory)
            if len(directories) != 1:
                return cls.from_model_dirs(directories, checkpoint)
            directory = directories[0]
        if resolve_export_dir(directory) is not None:
            return ExportedTranslator.load(directory)
        return cls.from_model_dir(directory, checkpoint)

    @classmethod
    def from_model_dir(
        cls,
        directory: str | Path,
        checkpoint: str = "best",
        precision: str = "float32",
        store_weights: bool = True,
    ) -> Translator:
        """Loads a trained model directory (config, SentencePiece models, checkpoints).

        Args:
            directory: the training `output_dir`.
            checkpoint: "best" or "latest" (see `load`).
            precision: "float32" (the default: translations as the model was validated),
                "bfloat16" (matmuls in bfloat16, variables float32; fast where the hardware
                has it) or "auto" (`precision.inference_precision`: bfloat16 where native).
                An export records its own (`translator export --precision`).
            store_weights: in bfloat16, keep the decoder's weights cast once in variables
                (`Seq2Seq.store_search_weights`: more memory, no casts per call); False casts
                them in every call. Translations are the same either way.

        Raises:
            ModelDirError: `directory` is missing or is not a trained model directory.
            ValueError: `precision` is not one of auto, bfloat16, float32.
        """
        chosen, why = inference_precision(precision)
        member = _read_model_dir(directory)
        model = _restore(member, checkpoint, chosen, why, store_weights)
        return cls(model, member.tokenizers, member.config, (member.directory,))

    @classmethod
    def from_model_dirs(
        cls,
        directories: Sequence[str | Path],
        checkpoint: str = "best",
        precision: str = "float32",
        store_weights: bool = True,
    ) -> Translator:
        """Loads trained model directories as one ensemble (`ensemble.Ensemble`): each step
        decodes with the mean of the members' log-probabilities.

        The members must share both SentencePiece models, the languages and the decoding length
        limits (`ensemble.check_members`); the other decoding defaults (beam size, length
        penalty, ...) and the data section are the first member's. `precision` and
        `store_weights`: as in `from_model_dir`, for every member.

        Raises:
            ModelDirError: a directory is missing, is an export or is not a trained model.
            EnsembleError: fewer than two directories, or members that differ (the message
                names the member and what differs).
            ValueError: `precision` is not one of auto, bfloat16, float32.
        """
        chosen, why = inference_precision(precision)
        if len(directories) < 2:
            raise EnsembleError(f"an ensemble needs at least two models, got {len(directories)}")
        for directory in directories:
            if resolve_export_dir(directory) is not None:
                raise ModelDirError(
                    f"{directory} is an export: an ensemble is built from training directories "
                    "(export the ensemble itself with one --model per member)"
                )
        members = [_read_model_dir(directory) for directory in directories]
        check_members(members)  # before any checkpoint is read
        models = [_restore(m, checkpoint, chosen, why, store_weights) for m in members]
        ensemble = Ensemble(models)
        first = members[0]
        return cls(ensemble, first.tokenizers, first.config, tuple(m.directory for m in members))

    def source_sentencepiece(self) -> bytes:
        """The source SentencePiece model, which over-long sentences are chunked with."""
        return self.tokenizers.source_model

    def translate_function(
        self, beam_size: int, n_best: int, length_penalty: float, max_length_ratio: float
    ) -> tf.types.experimental.GenericFunction:
        """The cached in-graph translate function for these decoding options."""
        key = DecodeOptions(beam_size, n_best, float(length_penalty), float(max_length_ratio))
        if key not in self._functions:
            decode = self.config.decode
            self._functions[key] = build_translate_function(
                self.model,
                self.tokenizers,
                *key,
                max_length=decode.max_length,
                max_source_length=decode.max_source_length,
                float32_below=self.float32_below,
                lean=self.lean,
            )
        return self._functions[key]

    def _run(self, options: DecodeOptions, batch: list[str]) -> dict[str, tf.Tensor]:
        try:
            return super()._run(options, batch)
        except tf.errors.NotFoundError as exc:
            if "Sentencepiece" not in str(exc):
                raise
            # tf.random.set_seed (keras.utils.set_random_seed) clears TensorFlow's kernel cache,
            # which drops the SentencePiece resources: rebuild the tokenizers once and retry.
            self.tokenizers = Tokenizers(self.tokenizers.source_model, self.tokenizers.target_model)
            self._functions.clear()
            return super()._run(options, batch)


def _lean(model: Seq2Seq | Ensemble, lean: bool | None) -> bool:
    """Whether `build_translate_function`'s search for `model` is lean (from logits, finished
    sentences dropped): `lean` where given, else always in bfloat16 and `FLOAT32_LEAN` in
    float32 (a bfloat16 model's float32 path for small batches included)."""
    if not isinstance(model, Seq2Seq):
        return False
    if lean is not None:
        return lean
    return _bfloat16(model) or FLOAT32_LEAN


def _bfloat16(model: Seq2Seq | Ensemble) -> bool:
    """Whether `model` (or a member of an ensemble) computes in bfloat16."""
    return any(m.compute_dtype == "bfloat16" for m in getattr(model, "members", [model]))


def _read_model_dir(directory: str | Path) -> Member:
    """The config and tokenizers of a trained model directory (no checkpoint read yet)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirError(f"model directory not found: {directory}")
    if not is_model_dir(directory):
        raise ModelDirError(f"{directory} is not a trained model (no {CONFIG_FILE})")
    return Member(directory, load_config(directory / CONFIG_FILE), Tokenizers.load(directory))


def _restore(
    member: Member, checkpoint: str, precision: str, why: str, store_weights: bool = True
) -> Seq2Seq:
    """Builds `member`'s model computing in `precision` ("float32" or "bfloat16"; `why`: the
    reason, for the log), restores its `checkpoint` ("best" or "latest") and, with
    `store_weights`, keeps the search step's weights cast once (`store_search_weights`)."""
    tokenizers = member.tokenizers
    with dtype_policy(policy_name(precision)):
        model = build_model(
            member.config.model, tokenizers.source_vocab_size, tokenizers.target_vocab_size
        )
    path = find_checkpoint(member.directory, checkpoint)
    tf.train.Checkpoint(model=model).restore(path).expect_partial()
    log.info("loaded %s in %s (%s)", path, precision, why)
    if store_weights:
        model.store_search_weights()
    return model


__all__ = [
    "CHARS_PER_PIECE",
    "LENGTH_MARGIN",
    "Hypothesis",
    "Translator",
    "build_translate_function",
    "check_texts",
]
