"""What a run trains and validates on: the corpora, the tokenizers, the encoded training pairs,
and the batches of each epoch."""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf

from translator import data as data_lib
from translator.config import Config
from translator.errors import TrainingError
from translator.model_dir import has_tokenizers
from translator.pipeline import EncodedCorpus, encode_corpus, make_dataset
from translator.tokenizer import Tokenizers, load_or_train

log = logging.getLogger(__name__)


def load_data(
    config: Config, output_dir: Path, work_dir: Path, is_chief: bool
) -> tuple[Tokenizers, EncodedCorpus, data_lib.ParallelCorpus | None]:
    """Reads the corpora, loads or trains the tokenizers, encodes the training pairs.

    Returns:
        The tokenizers, the encoded training pairs (length-filtered), and the validation
        corpus (None when none is configured).

    Raises:
        TrainingError: no training pair is left after the length filter.
    """
    data_cfg = config.data
    train = data_lib.load_corpus(data_cfg, "train")
    log.info(
        "train corpus: %d pairs from %s (%d empty skipped)",
        len(train),
        train.origin,
        train.skipped_empty,
    )
    valid = None
    if data_cfg.valid.source or data_cfg.tfds:
        valid = data_lib.load_corpus(data_cfg, "valid")
        log.info("valid corpus: %d pairs from %s", len(valid), valid.origin)
    else:
        log.warning("no validation data configured: skipping validation loss and BLEU")
    # Other workers read the chief's vocabulary when they see it (shared or resumed
    # output_dir) and otherwise train the same one (SentencePiece training is
    # deterministic); the trainer checks that every worker ended up with the same models.
    source = output_dir if is_chief or has_tokenizers(output_dir) else None
    tokenizers = load_or_train(
        source or work_dir, train.sources, train.targets, config.tokenizer, config.train.seed
    )
    encoded = encode_corpus(tokenizers, train.sources, train.targets, data_cfg.max_length)
    if len(encoded) == 0:
        raise TrainingError(
            f"no training pairs left after the length filter "
            f"(data.max_length={data_cfg.max_length})"
        )
    return tokenizers, encoded, valid


def train_batches(encoded: EncodedCorpus, config: Config, epoch: int, skip: int) -> tf.data.Dataset:
    """Epoch `epoch`'s shuffled batches (the order depends on `seed + epoch` only), without
    the first `skip` (those a resumed run already trained on)."""
    cfg = config.train
    return make_dataset(
        encoded,
        cfg.batch_size,
        cfg.batch_tokens,
        cfg.bucket_width,
        config.data.max_length,
        shuffle=True,
        seed=cfg.seed,
        epoch=epoch,
        shuffle_buffer=cfg.shuffle_buffer,
        fixed_shapes=cfg.jit_compile,
    ).skip(skip)


def eval_batches(encoded: EncodedCorpus, config: Config) -> tf.data.Dataset:
    """The batches of an encoded corpus in order, shaped like the training batches."""
    cfg = config.train
    return make_dataset(
        encoded,
        cfg.batch_size,
        cfg.batch_tokens,
        cfg.bucket_width,
        config.data.max_length,
        shuffle=False,
        fixed_shapes=cfg.jit_compile,
    )


def count_batches(encoded: EncodedCorpus, config: Config) -> int:
    """Global batches in one epoch (the same for every epoch: the shuffle only reorders)."""
    return int(train_batches(encoded, config, 0, 0).reduce(0, lambda n, _: n + 1))
