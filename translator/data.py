"""Corpora by split: read whole (evaluation sets), scanned in one streaming pass (a training
corpus: validation, counts, the tokenizer's sample), or streamed through `tf.data` (training).

A split comes from plain files (`data.<split>.source`, plus `.target` unless the source is a TSV
file; relative paths from the working directory), which win over `data.tfds`. Reading,
validation and normalisation rules: translator.corpus_files. The training stream reads the same
files with the same block reader (`tf.data.Dataset.from_generator`, a block of lines per call:
`tf.data.TextLineDataset` would delete every carriage return inside a line, where the rules make
it a space), or a TFDS split as `tf.data`, and normalises in-graph with the same rules
(`normalise_strings`, RE2 in parallel tf.data threads), so it gives the pairs `load_corpus`
would, in the same order, without ever holding the corpus.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from translator import tfds_corpus
from translator.config import DataConfig, SplitConfig
from translator.corpus_files import (
    CONTROL_RANGES,
    OTHER_WHITESPACE,
    Block,
    ParallelCorpus,
    char_class,
    collect,
    normalise,
    origin,
    pair_blocks,
    read_parallel,
)
from translator.corpus_scan import CorpusScan, scan
from translator.errors import DataError

__all__ = [
    "ParallelCorpus",
    "load_corpus",
    "load_tfds_pairs",
    "normalise",
    "normalise_strings",
    "read_parallel",
    "scan_corpus",
    "text_batches",
]

_SPLITS = ("train", "valid", "test")
STREAM_BATCH = 1024  # TFDS examples normalised (and then tokenized) per call in the stream
_CONTROL_RE2 = char_class(CONTROL_RANGES, re2=True)
_SPACE_RE2 = char_class(CONTROL_RANGES + OTHER_WHITESPACE, re2=True)
_ENDS_RE2 = f"^{_SPACE_RE2}+|{_SPACE_RE2}+$"


def load_corpus(data: DataConfig, split: str) -> ParallelCorpus:
    """Loads split "train", "valid" or "test" as configured in `data`, into memory.

    Raises:
        DataError: neither files nor a TFDS dataset are configured, or reading fails.
    """
    files = _files(data, split)
    if files is not None:
        return read_parallel(files.source, files.target)
    return load_tfds_pairs(
        data.tfds,
        getattr(data, f"{split}_split"),
        data.source_lang,
        data.target_lang,
        manual_dir=data.manual_dir,
        data_dir=data.data_dir,
    )


def load_tfds_pairs(
    name: str,
    split: str,
    source_lang: str,
    target_lang: str,
    manual_dir: str | None = None,
    data_dir: str | None = None,
) -> ParallelCorpus:
    """Prepares (if needed) and reads a TFDS translation dataset in the requested direction.

    Args: as `tfds_corpus.load_builder`, and `split`: a TFDS split, e.g. "train",
    "validation", "test" (slices like "train[:1%]" work).

    Raises:
        DataError: unknown dataset or language, offline without `manual_dir`, failed download.
    """
    blocks, name = _tfds_blocks(name, split, source_lang, target_lang, manual_dir, data_dir)
    return collect(blocks, name)


def scan_corpus(data: DataConfig, split: str, sample_size: int, seed: int = 0) -> CorpusScan:
    """One streaming pass over a split: validated, counted, sampled (see corpus_scan).

    Raises:
        DataError: as `load_corpus`, found while reading the whole split.
    """
    files = _files(data, split)
    if files is not None:
        blocks = pair_blocks(files.source, files.target)
        return scan(blocks, origin(files.source, files.target), sample_size, seed)
    blocks, name = _tfds_blocks(
        data.tfds,
        getattr(data, f"{split}_split"),
        data.source_lang,
        data.target_lang,
        data.manual_dir,
        data.data_dir,
    )
    return scan(blocks, name, sample_size, seed)


def text_batches(data: DataConfig, split: str, shards: int = 1, index: int = 0) -> tf.data.Dataset:
    """A split streamed from disk: batches `(sources [n], targets [n])` of normalised strings in
    corpus order, pairs with an empty side dropped (a batch may be empty).

    With `shards` > 1 only pair `i` with `i % shards == index` is read into a batch: the shards
    are disjoint and together hold every pair once. The split should have been checked by
    `scan_corpus` first: an error found here stops the stream mid-epoch.
    """
    files = _files(data, split)
    if files is None:
        builder = tfds_corpus.load_builder(
            data.tfds, data.source_lang, data.target_lang, data.manual_dir, data.data_dir
        )
        name = tfds_corpus.builder_name(data.tfds, data.source_lang, data.target_lang)
        split_name = getattr(data, f"{split}_split")
        pairs = tfds_corpus.split_dataset(
            builder, name, split_name, data.source_lang, data.target_lang
        )
        batches = pairs.shard(shards, index).batch(STREAM_BATCH)
    else:
        batches = _file_batches(files.source, files.target, shards, index)
    return batches.map(_normalised_pairs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def normalise_strings(text: tf.Tensor) -> tf.Tensor:
    """`corpus_files.normalise`, in-graph, on a string tensor of valid UTF-8."""
    text = tf.strings.regex_replace(text, _CONTROL_RE2, " ")
    text = tf.strings.regex_replace(text, " {2,}", " ")
    return tf.strings.regex_replace(text, _ENDS_RE2, "")


@tf.autograph.experimental.do_not_convert
def _normalised_pairs(source: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Raw pairs `[n]` -> normalised pairs with both sides non-empty."""
    source, target = normalise_strings(source), normalise_strings(target)
    keep = (tf.strings.length(source) > 0) & (tf.strings.length(target) > 0)
    return tf.boolean_mask(source, keep), tf.boolean_mask(target, keep)


def _file_batches(source: str, target: str | None, shards: int, index: int) -> tf.data.Dataset:
    """Blocks of raw pairs of two files or a TSV file (corpus_files' reader: the lines the scan
    and `read_parallel` see), this shard's pairs only, as string tensors."""

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        start = 0  # corpus index of the block's first pair
        for sources, targets in pair_blocks(source, target):
            first = (index - start) % shards
            start += len(sources)
            # Object arrays: a fixed-width unicode array would be as wide as the longest line.
            yield (
                np.array(sources[first::shards], dtype=object),
                np.array(targets[first::shards], dtype=object),
            )

    spec = tf.TensorSpec([None], tf.string)
    return tf.data.Dataset.from_generator(blocks, output_signature=(spec, spec))


def _files(data: DataConfig, split: str) -> SplitConfig | None:
    """The split's files, or None when it comes from `data.tfds`."""
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(_SPLITS)}")
    files = getattr(data, split)
    if files.source:
        return files
    if files.target:
        raise DataError(f"data.{split}.target is set but data.{split}.source is not")
    if data.tfds:
        return None
    raise DataError(
        f"no data for split '{split}': set data.{split}.source/data.{split}.target or data.tfds"
    )


def _tfds_blocks(
    name: str,
    split: str,
    source_lang: str,
    target_lang: str,
    manual_dir: str | None,
    data_dir: str | None,
) -> tuple[Iterator[Block], str]:
    """Blocks of a TFDS split's decoded pairs, and the split's name in messages."""
    builder = tfds_corpus.load_builder(name, source_lang, target_lang, manual_dir, data_dir)
    name = tfds_corpus.builder_name(name, source_lang, target_lang)
    pairs = tfds_corpus.split_dataset(builder, name, split, source_lang, target_lang)
    where = f"tfds {name}:{split}"
    return tfds_corpus.example_blocks(pairs, where), where
