"""tf.data pipeline: ids, BOS/EOS, length filter, bucketing, batching, prefetch; and the one
way a source sentence becomes encoder input at translation time (`prepare_source`).

Each training element is a triple of right-padded int32 batches (pad id 0):

    source     [batch, src_time]   source pieces + EOS
    target_in  [batch, tgt_time]   BOS + target pieces      (decoder input, teacher forcing)
    target_out [batch, tgt_time]   target pieces + EOS      (labels)

Training pairs come in two forms with the same batches: an `EncodedCorpus` (ids in memory,
tokenized once: small corpora, validation sets) or a `StreamedCorpus` (read from disk and
tokenized in-graph every epoch, with the tensorflow_text SentencePiece op: memory bounded by the
shuffle buffer, not by the corpus). Epoch `e` shuffles with seed `seed + e` and is reproducible
either way, so a resumed run can skip the batches it already trained on and see exactly the same
data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from translator.constants import BOS_ID, EOS_ID, PAD_ID
from translator.tokenizer import Tokenizers

log = logging.getLogger(__name__)

_CHUNK = 8192  # sentences per tokenizer call: bounds peak memory on large corpora


@dataclass(frozen=True)
class EncodedCorpus:
    """A tokenized parallel corpus (ids without BOS/EOS), with what the length filter dropped."""

    source: tf.RaggedTensor  # [pairs, (src_pieces)] int32
    target: tf.RaggedTensor  # [pairs, (tgt_pieces)] int32
    dropped_long: int = 0

    def __len__(self) -> int:
        return int(self.source.nrows())

    @property
    def target_tokens(self) -> int:
        """Target tokens per epoch, EOS included (what tokens/s counts)."""
        return int(tf.size(self.target.flat_values)) + len(self)


@dataclass(frozen=True)
class StreamedCorpus:
    """Training pairs streamed from disk, tokenized and length-filtered in the pipeline.

    Attributes:
        pairs: `pairs(shards, index)` -> the `(source ids, target ids)` pairs of shard `index`
            of `shards` (see `encode_batches`), in corpus order, read anew on every call.
        size: pairs before the length filter (an upper bound on what `pairs` gives).
        sample_lengths: `sample_lengths()` -> `[sample, 2]` source and target pieces of the
            tokenizer's sample pairs that pass the length filter (for `estimate_batches`;
            tokenizing the sample takes seconds, so only when asked).
        sample_size: pairs in that sample before the length filter.
    """

    pairs: Callable[[int, int], tf.data.Dataset]
    size: int
    sample_lengths: Callable[[], np.ndarray]
    sample_size: int

    def __len__(self) -> int:
        return self.size


def encode_batches(
    tokenizers: Tokenizers, batches: tf.data.Dataset, max_length: int | None = None
) -> tf.data.Dataset:
    """Batches of `(sources [n], targets [n])` strings -> batches of `(source [n', (pieces)],
    target [n', (pieces)])` ragged int32 ids, tokenized in-graph; the pairs `encode_corpus` drops
    (an empty side, or more than `max_length` pieces) are dropped."""

    @tf.autograph.experimental.do_not_convert
    def encode(sources: tf.Tensor, targets: tf.Tensor):
        source = tokenizers.source.tokenize(sources)  # [n, (pieces)]
        target = tokenizers.target.tokenize(targets)
        src_len, tgt_len = source.row_lengths(), target.row_lengths()  # [n]
        keep = (src_len > 0) & (tgt_len > 0)
        if max_length is not None:
            keep &= (src_len <= max_length) & (tgt_len <= max_length)
        return tf.ragged.boolean_mask(source, keep), tf.ragged.boolean_mask(target, keep)

    return batches.map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def collect(batches: tf.data.Dataset, total: int, max_length: int | None) -> EncodedCorpus:
    """Gathers the ragged batches of `encode_batches` into an EncodedCorpus in memory.

    `total`: the pairs before the length filter (the count of what it dropped is logged).
    """
    sources, targets = [], []
    for source, target in batches:
        sources.append(source)
        targets.append(target)
    if not sources:
        empty = tf.ragged.constant([], tf.int32, 1)
        return EncodedCorpus(empty, empty, total)
    source = tf.concat(sources, 0) if len(sources) > 1 else sources[0]
    target = tf.concat(targets, 0) if len(targets) > 1 else targets[0]
    dropped = total - int(source.nrows())
    if dropped:
        log.info(
            "length filter: dropped %d of %d pairs (limit %s pieces)", dropped, total, max_length
        )
    return EncodedCorpus(source, target, dropped)


def tokenize(tokenizer, texts: Sequence[str]) -> tf.RaggedTensor:
    """Tokenizes `texts` in chunks with an in-graph SentencePiece tokenizer."""
    parts = [
        tokenizer.tokenize(tf.constant(list(texts[i : i + _CHUNK]), tf.string))
        for i in range(0, len(texts), _CHUNK)
    ]
    if not parts:
        return tf.ragged.constant([], dtype=tf.int32, ragged_rank=1)
    return tf.concat(parts, axis=0) if len(parts) > 1 else parts[0]


def encode_corpus(
    tokenizers: Tokenizers,
    sources: Sequence[str],
    targets: Sequence[str],
    max_length: int | None = None,
    quiet: bool = False,
) -> EncodedCorpus:
    """Tokenizes both sides and drops pairs where either side has more than `max_length` pieces.

    Pairs where either side tokenizes to nothing are dropped too (counted with the long ones):
    the decoder would have nothing to learn from them. `quiet`: do not log what was dropped.
    """
    source = tokenize(tokenizers.source, sources)
    target = tokenize(tokenizers.target, targets)
    src_len = source.row_lengths().numpy()
    tgt_len = target.row_lengths().numpy()
    keep = (src_len > 0) & (tgt_len > 0)
    if max_length is not None:
        keep &= (src_len <= max_length) & (tgt_len <= max_length)
    dropped = int((~keep).sum())
    if dropped:
        index = tf.constant(np.flatnonzero(keep), tf.int64)
        source, target = tf.gather(source, index), tf.gather(target, index)
        (log.debug if quiet else log.info)(
            "length filter: dropped %d of %d pairs (limit %s pieces)",
            dropped,
            len(keep),
            max_length,
        )
    return EncodedCorpus(source, target, dropped)


def prepare_source(
    tokenizer, texts: tf.Tensor, max_source_length: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Encoder input for a batch of source sentences, as translation (and an export) builds it.

    Strips the sentences, tokenizes them, keeps at most `max_source_length` pieces, appends
    EOS and right-pads with PAD_ID. Runs eagerly or inside a `tf.function`.

    Args:
        tokenizer: the in-graph source tokenizer (`Tokenizers.source`).
        texts: [batch] string.
        max_source_length: the most pieces kept per sentence (`decode.max_source_length`).

    Returns:
        `(source [batch, src_time] int32, source_lengths [batch] int32)`; the lengths count the
        pieces before truncation (0 for an empty sentence).
    """
    pieces = tokenizer.tokenize(tf.strings.strip(texts))  # [batch, (pieces)]
    source_lengths = tf.cast(pieces.row_lengths(), tf.int32)  # [batch]
    pieces = pieces[:, :max_source_length]
    eos = tf.fill([pieces.nrows(), 1], EOS_ID)
    source = tf.concat([pieces, eos], axis=1).to_tensor(PAD_ID)  # [batch, src_time]
    return source, source_lengths


@tf.autograph.experimental.do_not_convert
def _add_specials(source: tf.Tensor, target: tf.Tensor):
    """source + EOS, BOS + target, target + EOS."""
    eos = tf.constant([EOS_ID], tf.int32)
    bos = tf.constant([BOS_ID], tf.int32)
    return tf.concat([source, eos], 0), tf.concat([bos, target], 0), tf.concat([target, eos], 0)


def bucket_boundaries(max_length: int, width: int) -> list[int]:
    """Upper length bounds (exclusive) of the buckets: width+1, 2*width+1, ... past max_length+1.

    Lengths include the added BOS/EOS, so the longest allowed pair (max_length pieces + 1)
    always falls inside the last bucket.
    """
    top = max_length + 1
    return [b + 1 for b in range(width, top + width, width)]


def bucket_batch_sizes(boundaries: Sequence[int], batch_size: int, batch_tokens: int = 0) -> list:
    """Sentences per batch for each bucket (one more than `boundaries`: the overflow bucket).

    With `batch_tokens`, a bucket whose sequences are shorter than `bound` holds
    `batch_tokens // bound` sentences (at least 1), so every batch has at most about
    `batch_tokens` padded tokens per side.
    """
    if batch_tokens > 0:
        return [max(1, batch_tokens // bound) for bound in boundaries] + [1]
    return [batch_size] * (len(boundaries) + 1)


def estimate_batches(
    corpus: StreamedCorpus,
    batch_size: int,
    batch_tokens: int = 0,
    bucket_width: int = 8,
    max_length: int = 100,
    shards: int = 1,
) -> int:
    """Batches of one shard of `shards` in an epoch, estimated from the tokenizer's sample.

    A bucket of `n` pairs gives `ceil(n / its batch size)` batches whatever the order, so with
    the whole corpus as the sample and one shard this is the exact count; otherwise each
    bucket's share of the sample is scaled to the corpus (and divided among the shards).
    """
    boundaries = bucket_boundaries(max_length, bucket_width)
    sizes = bucket_batch_sizes(boundaries, batch_size, batch_tokens)
    sample = corpus.sample_lengths()
    lengths = sample.max(axis=1) + 1 if len(sample) else []
    buckets = np.searchsorted(boundaries, lengths, side="right")  # as bucket_by_sequence_length
    scale = corpus.size / max(corpus.sample_size, 1) / shards
    counts = np.bincount(buckets, minlength=len(sizes)) * scale
    return int(sum(math.ceil(round(n, 6) / size) for n, size in zip(counts, sizes, strict=True)))


def make_dataset(
    corpus: EncodedCorpus | StreamedCorpus,
    batch_size: int,
    batch_tokens: int = 0,
    bucket_width: int = 8,
    max_length: int = 100,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer: int = 50_000,
    fixed_shapes: bool = False,
    shard: tuple[int, int] = (1, 0),
) -> tf.data.Dataset:
    """Batches a corpus by length buckets; every pair appears exactly once per epoch.

    Args:
        corpus: the tokenized pairs, in memory or streamed.
        batch_size: sentences per batch (used when `batch_tokens` is 0).
        batch_tokens: if > 0, each bucket's batch holds about this many padded tokens per side,
            so short sentences come in large batches and long ones in small ones.
        bucket_width: bucket granularity in pieces.
        max_length: the longest pair (pieces, before BOS/EOS) the corpus may contain.
        shuffle: shuffle the pairs (seeded by `seed + epoch`, in a buffer of at most
            `shuffle_buffer` pairs) and the batch order.
        fixed_shapes: give every batch of a bucket the same shape: time padded to the bucket's
            upper bound and, for a bucket's last (partial) batch, extra all-pad rows up to the
            bucket's batch size. XLA then compiles each bucket's shape once instead of once per
            batch. All-pad rows hold no target token, so they add nothing to the loss.
        shard: `(shards, index)`: batch only pair `i` with `i % shards == index`.

    Returns:
        A dataset of (source, target_in, target_out) int32 batches, right-padded with 0.
    """
    shards, index = shard
    if isinstance(corpus, StreamedCorpus):
        longest = 0  # the stream's length filter keeps pairs within max_length
        ds = corpus.pairs(shards, index).unbatch()
    else:
        longest = int(
            max(
                corpus.source.row_lengths().numpy().max(initial=0),
                corpus.target.row_lengths().numpy().max(initial=0),
            )
        )
        ds = tf.data.Dataset.from_tensor_slices((corpus.source, corpus.target))
        if shards > 1:
            ds = ds.shard(shards, index)
    boundaries = bucket_boundaries(max(max_length, longest), bucket_width)
    sizes = bucket_batch_sizes(boundaries, batch_size, batch_tokens)
    if shuffle:
        ds = ds.shuffle(
            max(1, min(shuffle_buffer, len(corpus))),
            seed=seed + epoch,
            reshuffle_each_iteration=False,
        )
    ds = ds.map(_add_specials, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.bucket_by_sequence_length(
        element_length_func=lambda s, ti, to: tf.maximum(tf.shape(s)[0], tf.shape(ti)[0]),
        bucket_boundaries=boundaries,
        bucket_batch_sizes=sizes,
        pad_to_bucket_boundary=fixed_shapes,
    )
    if fixed_shapes:
        # A bucket's batches are padded to time `bound - 1`, which identifies the bucket.
        rows = np.zeros(boundaries[-1], np.int32)
        for bound, size in zip(boundaries, sizes, strict=False):
            rows[bound - 1] = size
        ds = ds.map(
            lambda *batch: _pad_rows(batch, tf.constant(rows)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    if shuffle:
        ds = ds.shuffle(64, seed=seed + epoch, reshuffle_each_iteration=False)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _pad_rows(batch: tuple, rows_by_time: tf.Tensor) -> tuple:
    """Appends all-pad rows to each `[batch, time]` tensor up to its bucket's batch size."""
    rows = rows_by_time[tf.shape(batch[0])[1]]
    return tuple(tf.pad(t, [[0, rows - tf.shape(t)[0]], [0, 0]]) for t in batch)
