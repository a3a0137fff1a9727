"""Speed options change speed, not results: packed loss, fixed bucket shapes, XLA, bfloat16.

Each option is compared with the plain float32 train step on the same batches from the same
initial weights; bucketed batches must hold every example exactly once per epoch.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import pytest
import tensorflow as tf

from translator.config import Config, ModelConfig, config_from_dict
from translator.model import build_model
from translator.pipeline import EncodedCorpus, bucket_boundaries, make_dataset
from translator.tokenizer import BOS_ID, EOS_ID
from translator.train import Trainer, sequence_loss, token_losses

VOCAB = 40


class _Vocab(NamedTuple):
    """Stands in for Tokenizers where only the vocabulary sizes are read."""

    source_vocab_size: int = VOCAB
    target_vocab_size: int = VOCAB


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _corpus(pairs: int = 120, seed: int = 0) -> EncodedCorpus:
    """Random id pairs, 1-20 pieces per side; each target starts with a unique id pair."""
    rng = np.random.default_rng(seed)
    sources, targets = [], []
    for i in range(pairs):
        sources.append(rng.integers(4, VOCAB, rng.integers(1, 21)).tolist())
        targets.append(
            [4 + i // 36, 4 + i % 36] + rng.integers(4, VOCAB, rng.integers(0, 19)).tolist()
        )
    return EncodedCorpus(
        tf.ragged.constant(sources, tf.int32), tf.ragged.constant(targets, tf.int32)
    )


def _config(tmp_path, **train) -> Config:
    values = {
        "model": {"embedding_dim": 16, "units": 16, "dropout": 0.0},
        "train": {
            "batch_size": 16,
            "learning_rate": 0.01,
            "label_smoothing": 0.1,
            "seed": 3,
            "max_steps": 3,
            "mixed_precision": False,  # the float32 reference on every machine kind
            **train,
        },
        "output_dir": str(tmp_path),
    }
    return config_from_dict(values)


def _batch(extra_rows: int = 0, extra_columns: int = 0) -> tuple:
    """16 pairs of 1-21 pieces (one bucket, padded to the longest), plus optional all-pad rows
    and columns: what fixed bucket shapes add."""
    ds = make_dataset(_corpus(), 16, bucket_width=32, max_length=20, seed=5)
    batch = next(iter(ds))
    return tuple(tf.pad(t, [[0, extra_rows], [0, extra_columns]]) for t in batch)


def _train(config: Config, batch: tuple, weights: list, steps: int = 3) -> tuple[list, list]:
    """Per-step losses of the Trainer's train step, `steps` times on `batch`, from `weights`."""
    trainer = Trainer(config, progress=False)
    trainer._build(_Vocab())
    trainer.model.set_weights(weights)
    stop = tf.constant(0.0)
    losses = [float(trainer._train_step(batch, stop)[0]) for _ in range(steps)]
    return losses, trainer.model.get_weights()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Initial weights, and losses/weights of 3 plain steps (float32, unpacked, no XLA)."""
    keras.utils.set_random_seed(11)
    keras.mixed_precision.set_global_policy("float32")
    model = build_model(ModelConfig(embedding_dim=16, units=16), VOCAB, VOCAB)
    initial = model.get_weights()
    config = _config(tmp_path_factory.mktemp("ref"), packed_loss=False)
    losses, final = _train(config, _batch(), initial)
    return initial, losses, final


def _assert_close(a: list, b: list, rtol: float, atol: float) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    ("train", "fixed_shapes", "rtol"),
    [
        ({"packed_loss": True}, False, 1e-5),
        ({"packed_loss": False}, True, 1e-5),  # fixed bucket shapes: extra columns and rows
        ({"packed_loss": True}, True, 1e-5),
        ({"jit_compile": True}, True, 1e-4),
        ({"mixed_precision": True}, False, 3e-2),
    ],
    ids=["packed", "fixed_shapes", "packed+fixed_shapes", "xla", "bf16"],
)
def test_speed_option_gives_the_same_losses_and_weights(
    reference, tmp_path, train, fixed_shapes, rtol
):
    initial, ref_losses, ref_weights = reference
    batch = _batch(3, 5) if fixed_shapes else _batch()
    losses, weights = _train(_config(tmp_path, **train), batch, initial)
    assert ref_losses[2] < ref_losses[0]  # the steps did train
    np.testing.assert_allclose(losses, ref_losses, rtol=rtol)
    _assert_close(weights, ref_weights, rtol=max(rtol, 1e-4) * 10, atol=rtol)


def test_mixed_precision_does_not_leak_into_the_next_float32_trainer(tmp_path):
    bf16 = Trainer(_config(tmp_path / "a", mixed_precision=True), progress=False)
    bf16._build(_Vocab())
    assert bf16.model.encoder.embedding.compute_dtype == "bfloat16"
    plain = Trainer(_config(tmp_path / "b"), progress=False)
    plain._build(_Vocab())
    assert plain.model.encoder.embedding.compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_packed_and_unpacked_token_losses_agree_and_skip_padding():
    keras.utils.set_random_seed(2)
    model = build_model(ModelConfig(embedding_dim=8, units=8), VOCAB, VOCAB)
    batch = _batch(2, 3)
    tokens = int(tf.math.count_nonzero(batch[2]))
    assert tokens < batch[2].shape[0] * batch[2].shape[1]  # the batch has padding
    packed = token_losses(model, batch, 0.1, packed=True)
    unpacked = token_losses(model, batch, 0.1, packed=False)
    assert packed.shape == (tokens,)
    np.testing.assert_allclose(tf.reduce_sum(packed), tf.reduce_sum(unpacked), rtol=1e-5)
    np.testing.assert_allclose(
        np.sort(packed.numpy()), np.sort(unpacked.numpy()[unpacked.numpy() != 0]), rtol=1e-5
    )


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_sequence_loss_and_its_gradient_match_keras_cross_entropy(smoothing, graph):
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(3, 5, 11)) * 3, tf.float32)
    labels = tf.constant(rng.integers(0, 11, (3, 5)), tf.int32)
    weights = tf.constant(rng.uniform(0.0, 2.0, (3, 5)), tf.float32)  # per-token upstream

    def loss_and_grad(fn):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            losses = fn()
            total = tf.reduce_sum(losses * weights)
        return losses, tape.gradient(total, logits)

    def keras_loss():
        return keras.losses.categorical_crossentropy(
            tf.one_hot(labels, 11), logits, from_logits=True, label_smoothing=smoothing
        )

    def ours():
        return sequence_loss(labels, logits, smoothing)

    run = tf.function(loss_and_grad) if graph else loss_and_grad
    expected, expected_grad = run(keras_loss)
    got, got_grad = run(ours)
    assert got.shape == (3, 5) and got_grad.shape == logits.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(got_grad, expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", ["none", "luong"])
def test_decoder_features_projected_equal_the_logits(attention):
    keras.utils.set_random_seed(4)
    model = build_model(ModelConfig(embedding_dim=8, units=8, attention=attention), 20, 20)
    source = tf.constant([[5, 6, 7, EOS_ID], [8, EOS_ID, 0, 0]])
    target_in = tf.constant([[BOS_ID, 9, 10], [BOS_ID, 11, 0]])
    features, _ = model.decoder.features(target_in, model.encode(source))
    assert features.shape == (2, 3, 16)
    np.testing.assert_allclose(
        model.decoder.project(features), model((source, target_in)), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("tie", [False, True], ids=["dense", "tied"])
def test_bf16_projection_keeps_the_vocabulary_bias(tie):
    """In bfloat16 the bias is added in float32 after the matmul: the logits must still match
    float32's, bias included (a bias large enough that dropping it would fail)."""
    keras.utils.set_random_seed(5)
    config = ModelConfig(embedding_dim=8, units=8, tie_embeddings=tie)  # decoder: 16 units
    model = build_model(config, 20, 20)
    bias = model.decoder.output_bias if tie else model.decoder.output_dense.bias
    bias.assign(np.linspace(-3.0, 3.0, 20, dtype="float32"))
    features = 20.0 * tf.random.stateless_normal((6, 16), seed=(1, 2))
    expected = model.decoder.project(features).numpy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    bf16 = build_model(config, 20, 20)
    bf16.set_weights(model.get_weights())
    got = bf16.decoder.project(tf.cast(features, "bfloat16"))
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got, expected, rtol=0.02, atol=0.05)
    assert np.abs(expected - bias.numpy()).max() > 0.5  # the features do reach the logits


def _pairs(batches) -> list[tuple]:
    """(source, target) id tuples of every real row, specials and padding removed."""
    pairs = []
    for source, target_in, target_out in batches:
        for src, t_in, t_out in zip(
            source.numpy(), target_in.numpy(), target_out.numpy(), strict=True
        ):
            if not t_out.any():
                continue  # an all-pad row added by fixed shapes
            src, t_out = src[src != 0], t_out[t_out != 0]
            assert src[-1] == EOS_ID and t_out[-1] == EOS_ID and t_in[0] == BOS_ID
            np.testing.assert_array_equal(t_in[1 : len(t_out)], t_out[:-1])
            pairs.append((tuple(src[:-1]), tuple(t_out[:-1])))
    return pairs


@pytest.mark.parametrize(
    ("batch_tokens", "fixed_shapes"), [(0, False), (0, True), (96, False), (96, True)]
)
def test_bucketed_batches_hold_every_example_exactly_once(batch_tokens, fixed_shapes):
    corpus = _corpus(pairs=150, seed=1)
    expected = sorted(
        (tuple(s), tuple(t))
        for s, t in zip(corpus.source.to_list(), corpus.target.to_list(), strict=True)
    )
    for epoch in (0, 1):
        batches = list(
            make_dataset(
                corpus,
                16,
                batch_tokens=batch_tokens,
                max_length=20,
                seed=0,
                epoch=epoch,
                fixed_shapes=fixed_shapes,
            )
        )
        assert sorted(_pairs(batches)) == expected
    shapes = {tuple(b[0].shape) for b in batches}
    for source, target_in, _ in batches:
        assert source.shape[1] == target_in.shape[1] or not fixed_shapes
        if batch_tokens:
            assert source.shape[0] * max(source.shape[1], target_in.shape[1]) <= batch_tokens
        else:
            assert source.shape[0] <= 16
    if fixed_shapes:  # one shape per bucket, time at the bucket's bound
        assert len(shapes) <= len(bucket_boundaries(20, 8))
        assert {t for _, t in shapes} <= {b - 1 for b in bucket_boundaries(20, 8)}
