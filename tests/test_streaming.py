"""Streamed training data: the scan (validation, counts, sample), the in-graph normalisation,
a stream that gives the batches the in-memory corpus gives, bounded memory, errors found before
anything is written, and exact resume.

`data.in_memory_pairs=0` makes the tiny synthetic corpus stream like a large one.
"""

from __future__ import annotations

import gzip
import random
import tracemalloc
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from translator import data as data_lib
from translator.api import Translator
from translator.config import DataConfig, SplitConfig, TokenizerConfig
from translator.corpus_files import normalise, read_parallel
from translator.corpus_scan import scan
from translator.errors import DataError
from translator.pipeline import EncodedCorpus, StreamedCorpus, collect
from translator.tokenizer import load_or_train, train_sentencepiece
from translator.train import train
from translator.training.data import count_batches, load_data, train_batches

STREAM = ("data.in_memory_pairs=0",)
SMALL = ("model.units=16", "model.embedding_dim=16", "train.eval_bleu_sentences=5")


def _blocks(pairs: list[tuple[str, str]], size: int = 7):
    for i in range(0, len(pairs), size):
        chunk = pairs[i : i + size]
        yield [s for s, _ in chunk], [t for _, t in chunk]


def _write_corpus(directory: Path, n: int, seed: int = 0, compress: bool = False):
    """`n` numbered pairs of about 50 characters a side: `s<i> ...` / `t<i> ...`."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]
    src = "".join(f"s{i} " + " ".join(rng.choices(words, k=7)) + "\n" for i in range(n))
    tgt = "".join(f"t{i} " + " ".join(rng.choices(words, k=7)) + "\n" for i in range(n))
    paths = directory / "big.src", directory / ("big.tgt.gz" if compress else "big.tgt")
    paths[0].write_text(src)
    paths[1].write_bytes(gzip.compress(tgt.encode()) if compress else tgt.encode())
    return paths


# --- the scan: counts and a bounded, uniform, reproducible sample -------------------------------


def test_scan_counts_skips_empty_pairs_and_keeps_a_small_corpus_whole_in_order():
    pairs = [("a", "A"), (" ", "B"), ("c", "\t"), ("d", "D"), ("e\x00", "E")]
    result = scan(_blocks(pairs, size=2), "toy", size=10, seed=3)
    assert (result.pairs, result.skipped_empty) == (3, 2)
    assert result.sample.sources == ["a", "d", "e"] and result.sample.targets == ["A", "D", "E"]


def test_scan_samples_uniformly_at_most_size_pairs():
    pairs = [(f"s{i}", f"t{i}") for i in range(40)]
    seen = np.zeros(40)
    for seed in range(600):
        sample = scan(_blocks(pairs), "toy", size=8, seed=seed).sample
        assert len(sample) == 8 and sample.sources == sorted(
            sample.sources, key=lambda s: int(s[1:])
        )
        assert [s[1:] for s in sample.sources] == [t[1:] for t in sample.targets]  # aligned
        seen[[int(s[1:]) for s in sample.sources]] += 1
    frequency = seen / 600  # 8 of 40: 0.2 each
    assert frequency.min() > 0.13 and frequency.max() < 0.27, frequency
    first, again = (scan(_blocks(pairs), "toy", 8, seed=1).sample for _ in range(2))
    assert first == again


# --- the stream gives the pairs and batches that reading into memory gives ----------------------


@pytest.mark.parametrize(
    "text",
    [
        " a\x00\tb\u2028  c\xa0",
        "\xa0\u3000 x \u2009y\u00a0\u00a0z \u200b",
        "\x85\x1c\u2029",
        "kein  \u200d Joiner\r",
        "",
        "\u1680\u2000\u200a\u202f\u205f",
    ],
)
def test_in_graph_normalisation_matches_python(text):
    assert data_lib.normalise_strings(tf.constant([text])).numpy()[0].decode() == normalise(text)


@pytest.mark.parametrize("layout", ["files", "gzip", "tsv"])
def test_streamed_pairs_equal_the_pairs_read_into_memory(tmp_path, layout):
    sources = ["\ufeffEins", "", " zwei\x00", "drei\tvier", "fünf\u2028", "sechs", "x\r"]
    targets = ["one", "two", "", "three", "five", "six\r", "\t"]
    if layout == "tsv":
        pairs = zip(sources, targets, strict=True)
        lines = [f"{s.replace(chr(9), ' ')}\t{t.replace(chr(9), ' ')}" for s, t in pairs]
        files = SplitConfig(source=str(tmp_path / "c.tsv"))
        Path(files.source).write_text("\n".join(lines) + "\n\n")
    else:
        files = SplitConfig(source=str(tmp_path / "c.src"), target=str(tmp_path / "c.tgt"))
        Path(files.source).write_bytes(("\r\n".join(sources) + "\n").encode())
        raw = "\n".join(targets).encode()
        Path(files.target).write_bytes(gzip.compress(raw) if layout == "gzip" else raw)
    expected = read_parallel(files.source, files.target)
    streamed = ([], [])
    for src, tgt in data_lib.text_batches(DataConfig(train=files), "train"):
        streamed[0].extend(s.decode() for s in src.numpy())
        streamed[1].extend(t.decode() for t in tgt.numpy())
    assert streamed == (expected.sources, expected.targets)
    assert len(expected) == 4 and expected.skipped_empty == (4 if layout == "tsv" else 3)


def _load(config):
    keras.utils.set_random_seed(config.train.seed)
    out = Path(config.output_dir)
    return load_data(config, out, out, is_chief=True)


def _epoch(pairs, config, epoch: int) -> list[list[np.ndarray]]:
    return [[t.numpy() for t in batch] for batch in train_batches(pairs, config, epoch, 0)]


def test_streamed_epochs_are_the_in_memory_epochs_batch_for_batch(synthetic_files, tmp_path):
    memory = tiny_config(synthetic_files, tmp_path / "memory")
    streamed = tiny_config(synthetic_files, tmp_path / "streamed", STREAM)
    _, encoded, _ = _load(memory)
    _, stream, _ = _load(streamed)
    assert isinstance(encoded, EncodedCorpus) and isinstance(stream, StreamedCorpus)
    for epoch in (0, 1):
        a, b = _epoch(encoded, memory, epoch), _epoch(stream, streamed, epoch)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            for p, q in zip(x, y, strict=True):
                np.testing.assert_array_equal(p, q)
    assert _epoch(stream, streamed, 0)[0][0].tolist() != _epoch(stream, streamed, 1)[0][0].tolist()
    # The whole corpus is the tokenizer's sample here: the estimate is the exact count.
    assert count_batches(stream, streamed) == count_batches(encoded, memory) == len(a)


# --- memory: nothing holds the corpus ---------------------------------------------------------


def test_streaming_holds_neither_the_corpus_nor_its_ids(tmp_path):
    """100,000 pairs (10 MB of text): reading them into lists takes tens of MB of Python
    memory, a dataset over their ids in memory embeds them in its graph; the stream does
    neither (its graph holds the two SentencePiece models)."""
    src, tgt = _write_corpus(tmp_path, 100_000)
    overrides = (
        f"data.train.source={src}",
        f"data.train.target={tgt}",
        "tokenizer.max_sentences=2000",
        "tokenizer.vocab_size=100",
        *STREAM,
    )
    config = _config_without_files(tmp_path / "out", overrides)
    tracemalloc.start()
    try:
        _, pairs, _ = _load(config)
        batches = train_batches(pairs, config, 0, 0)
        next(iter(batches))
        streamed_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        read_parallel(src, tgt)
        lists_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(pairs, StreamedCorpus) and pairs.size == 100_000
    assert streamed_peak < 8e6 < 2e7 < lists_peak, (streamed_peak, lists_peak)
    # The same pairs as ids in memory: a dataset over them embeds them (~7 MB) in its graph.
    encoded = collect(pairs.pairs(1, 0), pairs.size, config.data.max_length)
    in_memory = train_batches(encoded, config, 0, 0)
    assert _graph_bytes(batches) < 1_000_000 < 5_000_000 < _graph_bytes(in_memory)


def _graph_bytes(dataset: tf.data.Dataset) -> int:
    """Bytes of a dataset's serialized graph (constants it embeds included)."""
    return len(dataset._as_serialized_graph().numpy())


def _config_without_files(out: Path, overrides: tuple):
    """tiny_config with the training files and no validation set from `overrides`."""
    names = [f"{split}.{side}" for split in ("train", "valid", "test") for side in ("src", "tgt")]
    files = dict.fromkeys(names, Path("unused"))
    overrides = ("data.valid.source=null", "data.valid.target=null", *overrides)
    return tiny_config(files, out, overrides)


# --- errors near the end of a streamed file: found before anything is written -----------------


@pytest.mark.parametrize("fault", ["invalid byte", "missing line"])
def test_fault_near_the_end_is_named_and_nothing_is_written(tmp_path, fault):
    src, tgt = _write_corpus(tmp_path, 20_000, compress=True)
    lines = gzip.decompress(tgt.read_bytes()).split(b"\n")
    if fault == "invalid byte":
        lines[19_997] = lines[19_997][:5] + b"\xc3\x28" + lines[19_997][5:]
        expected = rf"{tgt}: line 19998: invalid UTF-8"
    else:
        del lines[19_990]
        expected = rf"line counts differ: {src} has 20000 lines, {tgt} has 19999 lines"
    tgt.write_bytes(gzip.compress(b"\n".join(lines)))
    out = tmp_path / "out"
    overrides = (f"data.train.source={src}", f"data.train.target={tgt}", *SMALL, *STREAM)
    with pytest.raises(DataError, match=expected):
        train(_config_without_files(out, overrides), progress=False)
    assert not (out / "checkpoints").exists()
    assert not list(out.glob("spm.*"))


# --- resume ------------------------------------------------------------------------------------


def _weights(output_dir) -> list[np.ndarray]:
    return [v.numpy() for v in Translator.load(output_dir, checkpoint="latest").model.weights]


def test_streamed_resume_is_exact_mid_epoch_and_across_epochs(synthetic_files, tmp_path):
    """2,000 pairs in batches of 64: 32 steps an epoch. Stopped at step 10 (mid-epoch), resumed
    to step 40 (into epoch 2): the same weights as 40 steps straight."""
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    common = (*SMALL, *STREAM, "train.batch_size=64", "data.valid.source=null")
    common += ("data.valid.target=null",)
    first = train(tiny_config(synthetic_files, resumed, (*common, "train.max_steps=10")), False)
    assert first.steps == 10
    second = train(tiny_config(synthetic_files, resumed, (*common, "train.max_steps=40")), False)
    train(tiny_config(synthetic_files, straight, (*common, "train.max_steps=40")), False)
    assert (second.steps, second.epochs_done) == (40, 1)
    for a, b in zip(_weights(resumed), _weights(straight), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_tokenizers_trained_side_by_side_are_those_trained_one_after_the_other(tmp_path):
    sources = [f"das ist satz nummer {i} mit wort {i % 13}" for i in range(300)]
    targets = [f"this is sentence number {i} with word {i % 11}" for i in range(300)]
    config = TokenizerConfig(vocab_size=60)
    both = load_or_train(tmp_path, sources, targets, config, seed=3)
    assert both.source_model == train_sentencepiece(sources, config, 3)
    assert both.target_model == train_sentencepiece(targets, config, 3)
    assert not both.joint
