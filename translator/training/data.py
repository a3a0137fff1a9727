"""What a run trains and validates on: the corpora, the tokenizers, the training pairs, and the
batches of each epoch.

The training corpus is read once in a streaming pass (data.scan_corpus: validated, counted,
sampled) before any tokenizer or checkpoint is written; SentencePiece trains on the sample. Then a
corpus of at most `data.in_memory_pairs` pairs is tokenized once and held as ids (an
EncodedCorpus: what every run did before streaming, batch for batch); a larger one streams from
disk every epoch (a StreamedCorpus), and under several workers each worker reads its own shard.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from translator import data as data_lib
from translator.config import Config
from translator.corpus_scan import CorpusScan
from translator.errors import TrainingError
from translator.model_dir import has_tokenizers
from translator.pipeline import (
    EncodedCorpus,
    StreamedCorpus,
    collect,
    encode_batches,
    encode_corpus,
    estimate_batches,
    make_dataset,
)
from translator.tokenizer import Tokenizers, load_or_train

log = logging.getLogger(__name__)

_CHECKED = 1000  # sampled pairs tokenized before streaming, to fail early if none would pass

TrainingPairs = EncodedCorpus | StreamedCorpus
# What distribute_batches takes: the global batches, or per worker its own shard's batches.
EpochBatches = tf.data.Dataset | Callable[[int, int], tf.data.Dataset]


def load_data(
    config: Config,
    output_dir: Path,
    work_dir: Path,
    is_chief: bool,
    init_tokenizers: Tokenizers | None = None,
) -> tuple[Tokenizers, TrainingPairs, data_lib.ParallelCorpus | None]:
    """Scans the training corpus, reads the validation corpus, loads or trains the tokenizers,
    and prepares the training pairs (in memory or streamed).

    `init_tokenizers`: a fine-tuning run's (training/init_from.py), used as they are and
    copied into the output directory (on the chief) instead of training any.

    Returns:
        The tokenizers, the training pairs (length-filtered), and the validation corpus (None
        when none is configured).

    Raises:
        DataError: a corpus is missing, unreadable or misaligned (found before anything is
            written).
        TrainingError: no training pair is left after the length filter.
    """
    data_cfg = config.data
    seed = config.train.seed
    scan = data_lib.scan_corpus(data_cfg, "train", config.tokenizer.max_sentences, seed)
    log.info(
        "train corpus: %d pairs from %s (%d empty skipped)",
        scan.pairs,
        scan.origin,
        scan.skipped_empty,
    )
    valid = None
    if data_cfg.valid.source or data_cfg.tfds:
        valid = data_lib.load_corpus(data_cfg, "valid")
        log.info("valid corpus: %d pairs from %s", len(valid), valid.origin)
    else:
        log.warning("no validation data configured: skipping validation loss and BLEU")
    # Other workers read the chief's vocabulary when they see it (shared or resumed
    # output_dir) and otherwise train the same one (the sample and SentencePiece training
    # are deterministic); the trainer checks that every worker ended up with the same models.
    if init_tokenizers is not None:
        tokenizers = init_tokenizers
        if is_chief and not has_tokenizers(output_dir):
            tokenizers.save(output_dir)
        return tokenizers, training_pairs(config, tokenizers, scan), valid
    source = output_dir if is_chief or has_tokenizers(output_dir) else None
    sample = scan.sample
    tokenizers = load_or_train(
        source or work_dir, sample.sources, sample.targets, config.tokenizer, seed
    )
    return tokenizers, training_pairs(config, tokenizers, scan), valid


def training_pairs(config: Config, tokenizers: Tokenizers, scan: CorpusScan) -> TrainingPairs:
    """The training pairs: tokenized into memory when the corpus has at most
    `data.in_memory_pairs` pairs, else a stream (its sample tokenized for estimates)."""
    data_cfg = config.data
    max_length = data_cfg.max_length

    def pairs(shards: int, index: int) -> tf.data.Dataset:
        texts = data_lib.text_batches(data_cfg, "train", shards, index)
        return encode_batches(tokenizers, texts, max_length)

    if scan.pairs <= data_cfg.in_memory_pairs:
        encoded = collect(pairs(1, 0), scan.pairs, max_length)
        if len(encoded) == 0:
            raise _nothing_left(max_length)
        return encoded
    head = _sample_lengths(tokenizers, scan, max_length, _CHECKED)
    if len(head) == 0:  # a pair of the sample that passes is a pair of the corpus that does
        raise _nothing_left(max_length, f" in {min(_CHECKED, len(scan.sample))} sampled pairs")
    log.info(
        "streaming the training corpus (%d pairs > data.in_memory_pairs=%d)",
        scan.pairs,
        data_cfg.in_memory_pairs,
    )
    lengths = functools.cache(lambda: _sample_lengths(tokenizers, scan, max_length))
    return StreamedCorpus(pairs, scan.pairs, lengths, len(scan.sample))


def _sample_lengths(
    tokenizers: Tokenizers, scan: CorpusScan, max_length: int, limit: int | None = None
) -> np.ndarray:
    """`[pairs, 2]` source and target pieces of the (first `limit`) sampled pairs that pass the
    length filter."""
    sample = scan.sample
    encoded = encode_corpus(
        tokenizers, sample.sources[:limit], sample.targets[:limit], max_length, quiet=True
    )
    return np.stack(
        [encoded.source.row_lengths().numpy(), encoded.target.row_lengths().numpy()], axis=1
    )


def _nothing_left(max_length: int, where: str = "") -> TrainingError:
    return TrainingError(
        f"no training pairs left after the length filter{where} (data.max_length={max_length})"
    )


def train_batches(
    pairs: TrainingPairs, config: Config, epoch: int, skip: int, shard: tuple[int, int] = (1, 0)
) -> tf.data.Dataset:
    """Epoch `epoch`'s shuffled batches (the order depends on `seed + epoch` only), without
    the first `skip` (those a resumed run already trained on). With `shard` = (shards, index):
    that shard's batches, each with 1/shards of the sentences (or tokens) of a global batch."""
    cfg = config.train
    shards = shard[0]
    return make_dataset(
        pairs,
        *_shard_batch_sizes(cfg, shards),
        cfg.bucket_width,
        config.data.max_length,
        shuffle=True,
        seed=cfg.seed,
        epoch=epoch,
        shuffle_buffer=cfg.shuffle_buffer,
        fixed_shapes=cfg.jit_compile,
        shard=shard,
    ).skip(skip)


def epoch_batches(
    pairs: TrainingPairs,
    config: Config,
    epoch: int,
    skip: int,
    workers: int = 1,
    take: int | None = None,
) -> EpochBatches:
    """An epoch's batches for distribute_batches: the same global batches on every worker
    (pairs in memory, or one worker), or a function giving each of several workers the
    batches of its own shard of a streamed corpus (so every pair is read by one worker)."""

    def shard_batches(shards: int, index: int) -> tf.data.Dataset:
        batches = train_batches(pairs, config, epoch, skip, (shards, index))
        return batches if take is None else batches.take(take)

    if workers > 1 and isinstance(pairs, StreamedCorpus):
        return shard_batches
    return shard_batches(1, 0)


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


def count_batches(pairs: TrainingPairs, config: Config, workers: int = 1) -> int:
    """Global batches (steps) in one epoch, the same for every epoch: counted exactly for pairs
    in memory (the shuffle only reorders); estimated from the tokenizer's sample for a stream
    (exact when the sample is the whole corpus and one worker reads it; with several workers,
    one worker's batches: the steps until the last worker's shard runs out)."""
    if isinstance(pairs, EncodedCorpus):
        return int(train_batches(pairs, config, 0, 0).reduce(0, lambda n, _: n + 1))
    cfg = config.train
    shards = workers
    return estimate_batches(
        pairs,
        *_shard_batch_sizes(cfg, shards),
        cfg.bucket_width,
        config.data.max_length,
        shards,
    )


def _shard_batch_sizes(cfg, shards: int) -> tuple[int, int]:
    """One shard's (sentences, tokens) per batch: 1/shards of a global batch (tokens 0: off)."""
    tokens = max(1, cfg.batch_tokens // shards) if cfg.batch_tokens else 0
    return max(1, cfg.batch_size // shards), tokens
