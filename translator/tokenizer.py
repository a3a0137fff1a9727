"""SentencePiece tokenizers: trained on a sample of the training split (at most
`tokenizer.max_sentences` pairs, drawn by translator.corpus_scan), used in-graph through
tensorflow_text.

Special ids are fixed for every model this package trains: pad 0, unk 1, bos 2, eos 3. The model
files are stored next to the config in the model directory (`spm.source.model`,
`spm.target.model`; identical files when the vocabulary is joint), so the directory is
self-contained and an export can embed the same bytes in its graph.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text

from translator.config import TokenizerConfig
from translator.constants import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from translator.errors import ModelDirError
from translator.model_dir import SOURCE_SPM as SOURCE_FILE
from translator.model_dir import TARGET_SPM as TARGET_FILE

log = logging.getLogger(__name__)


def train_sentencepiece(sentences: Sequence[str], config: TokenizerConfig, seed: int = 0) -> bytes:
    """Trains a SentencePiece model on `sentences` and returns the serialized model.

    The vocabulary is a soft limit (`hard_vocab_limit=False`) so that a tiny corpus gives a
    smaller vocabulary instead of an error.
    """
    if len(sentences) > config.max_sentences:
        sentences = random.Random(seed).sample(list(sentences), config.max_sentences)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=config.vocab_size,
        model_type=config.model_type,
        character_coverage=config.character_coverage,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        hard_vocab_limit=False,
        max_sentence_length=1 << 16,
        num_threads=2,
        minloglevel=2,
    )
    return model.getvalue()


@dataclass(frozen=True)
class Tokenizers:
    """The source and target SentencePiece models, as bytes, with in-graph tokenizers."""

    source_model: bytes
    target_model: bytes

    @cached_property
    def source(self) -> tf_text.SentencepieceTokenizer:
        """In-graph source tokenizer (string -> ragged int32 ids)."""
        return _tokenizer(self.source_model, "source_sentencepiece")

    @cached_property
    def target(self) -> tf_text.SentencepieceTokenizer:
        """In-graph target tokenizer; `detokenize` turns ids back into text."""
        return _tokenizer(self.target_model, "target_sentencepiece")

    @property
    def source_vocab_size(self) -> int:
        """Pieces in the source SentencePiece model (ids 0..size-1, pad/unk/bos/eos included)."""
        return _vocab_size(self.source_model)

    @property
    def target_vocab_size(self) -> int:
        """Pieces in the target SentencePiece model."""
        return _vocab_size(self.target_model)

    @property
    def joint(self) -> bool:
        """Whether source and target share one (joint) SentencePiece model."""
        return self.source_model == self.target_model

    def fingerprints(self) -> dict[str, str]:
        """Short SHA-256 digests of both models (to tell vocabularies apart)."""
        return {
            "source": hashlib.sha256(self.source_model).hexdigest()[:16],
            "target": hashlib.sha256(self.target_model).hexdigest()[:16],
        }

    def save(self, directory: str | Path) -> None:
        """Writes both model files into `directory` (atomically, file by file)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in ((SOURCE_FILE, self.source_model), (TARGET_FILE, self.target_model)):
            tmp = directory / (name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(directory / name)

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizers:
        """Loads the two model files written by `save`."""
        directory = Path(directory)
        models = []
        for name in (SOURCE_FILE, TARGET_FILE):
            path = directory / name
            if not path.is_file():
                raise ModelDirError(f"tokenizer model missing: {path}")
            models.append(path.read_bytes())
        return cls(*models)


def _tokenizer(model: bytes, name: str) -> tf_text.SentencepieceTokenizer:
    """A tensorflow-text SentencePiece tokenizer whose resource lives outside any graph.

    `init_scope` matters because the first access is often inside a `tf.function` trace: a
    resource created there belongs to that graph and cannot be used by a second function.
    Distinct names matter because a SavedModel holding two SentencePiece resources of the same
    node name reloads both as whichever was created first.
    """
    with tf.init_scope():
        return tf_text.SentencepieceTokenizer(model=model, out_type=tf.int32, name=name)


def _vocab_size(model: bytes) -> int:
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model)
    return processor.GetPieceSize()


def load_or_train(
    directory: str | Path,
    sources: Sequence[str],
    targets: Sequence[str],
    config: TokenizerConfig,
    seed: int = 0,
) -> Tokenizers:
    """Loads the tokenizers from `directory`, or trains them on the corpus (or a sample of it:
    the training data passes `CorpusScan.sample`) and saves them there.

    A resumed run must reuse the vocabulary its checkpoints were trained with, so existing
    model files always win over retraining.
    """
    directory = Path(directory)
    if (directory / SOURCE_FILE).is_file() and (directory / TARGET_FILE).is_file():
        return Tokenizers.load(directory)
    if config.joint:
        joint = train_sentencepiece(list(sources) + list(targets), config, seed)
        tokenizers = Tokenizers(joint, joint)
    else:
        # Both at once: SentencePiece releases the GIL while it trains (same bytes either way).
        with ThreadPoolExecutor(2) as pool:
            source = pool.submit(train_sentencepiece, sources, config, seed)
            target = pool.submit(train_sentencepiece, targets, config, seed)
            tokenizers = Tokenizers(source.result(), target.result())
    tokenizers.save(directory)
    log.info(
        "trained SentencePiece: source vocab %d, target vocab %d%s",
        tokenizers.source_vocab_size,
        tokenizers.target_vocab_size,
        " (joint)" if config.joint else "",
    )
    return tokenizers


def pieces(model: bytes, text: str) -> list[str]:
    """The SentencePiece pieces of `text` (for looking at a tokenizer in a notebook)."""
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model)
    return processor.EncodeAsPieces(text)
