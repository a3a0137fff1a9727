"""Tests for translator.layers and translator.model: tiny seeded models, behaviour only."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from translator.config import ModelConfig
from translator.decoder import Decoder
from translator.layers import Attention, Bridge, Encoder
from translator.model import Seq2Seq, build_model

SRC_VOCAB, TGT_VOCAB = 20, 24
# Right-padded batches (pad id 0); the second source sentence is shorter.
SOURCE = np.array([[5, 6, 7, 8, 3], [9, 4, 3, 0, 0], [11, 3, 0, 0, 0]], "int32")  # [batch, src]
TARGET = np.array([[2, 4, 5, 6, 7], [2, 8, 9, 0, 0], [2, 10, 0, 0, 0]], "int32")  # [batch, tgt]
REAL = TARGET != 0


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


@pytest.fixture
def bfloat16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def tiny(**kwargs) -> Seq2Seq:
    args = dict(embedding_dim=8, units=8)
    args.update(kwargs)
    model = Seq2Seq(SRC_VOCAB, TGT_VOCAB, **args)
    model((SOURCE, TARGET))
    return model


def pad(ids: np.ndarray, extra: int) -> np.ndarray:
    return np.pad(ids, ((0, 0), (0, extra)))


def stepped_log_probs(model: Seq2Seq, source, target) -> np.ndarray:
    """log-probs `[batch, tgt, vocab]` from decode_step over the target prefix."""
    state = model.encode(source)
    out = []
    for t in range(target.shape[1]):
        log_probs, state = model.decode_step(tf.constant(target[:, t]), state)
        out.append(log_probs.numpy())
    return np.stack(out, axis=1)


CONFIGS = {
    "none": dict(),
    "luong": dict(attention="luong"),
    "bahdanau": dict(attention="bahdanau"),
    "bridge": dict(bridge=True, decoder_units=12, attention="luong"),
    "bridge_default_width": dict(bridge=True),
    "layers_2_2": dict(encoder_layers=2, decoder_layers=2, attention="bahdanau"),
    "layers_2_1": dict(encoder_layers=2, decoder_layers=1),
    "layers_1_3": dict(encoder_layers=1, decoder_layers=3, attention="luong"),
    "tied_same_width": dict(embedding_dim=16, tie_embeddings=True),
    "tied_projected": dict(tie_embeddings=True, attention="luong", bridge=True, decoder_units=6),
    "narrow_feed": dict(attention="bahdanau", attentional_dim=5),
    "narrow_feed_tied": dict(attention="luong", attentional_dim=8, tie_embeddings=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_and_state_contract(name):
    model = tiny(**CONFIGS[name])
    batch = SOURCE.shape[0]
    logits = model((SOURCE, TARGET))
    assert logits.shape == (batch, TARGET.shape[1], TGT_VOCAB)
    assert logits.dtype == tf.float32
    state = model.encode(SOURCE)
    width = model.decoder_units or 2 * model.units
    for i in range(model.decoder_layers):
        assert state[f"h{i}"].shape == (batch, width) and state[f"c{i}"].shape == (batch, width)
    assert all(v.shape[0] == batch for v in state.values())
    if model.attention != "none":
        assert state["memory"].shape == (batch, SOURCE.shape[1], 2 * model.units)
        assert state["memory_mask"].dtype == tf.bool
        assert state["feed"].shape == (batch, model.attentional_dim or width)
    log_probs, new_state = model.decode_step(tf.fill([batch], 2), state)
    assert log_probs.shape == (batch, TGT_VOCAB) and log_probs.dtype == tf.float32
    np.testing.assert_allclose(tf.reduce_logsumexp(log_probs, -1), 0.0, atol=1e-5)
    assert new_state.keys() == state.keys()
    for key, value in state.items():
        assert new_state[key].shape == value.shape and new_state[key].dtype == value.dtype, key


def test_tied_embeddings_share_the_matrix():
    tied = tiny(tie_embeddings=True, attention="luong")
    untied = tiny(attention="luong")

    def projections(model):  # 2-D variables mapping to the vocabulary
        return [w for w in model.decoder.weights if len(w.shape) == 2 and w.shape[1] == TGT_VOCAB]

    assert projections(tied) == [] and len(projections(untied)) == 1
    assert tied.count_params() < untied.count_params()


@pytest.mark.parametrize("attention", ["none", "luong", "bahdanau"])
def test_padding_does_not_change_context_or_logits(attention):
    model = tiny(attention=attention, encoder_layers=2, decoder_layers=2)
    state = model.encode(SOURCE)
    padded_state = model.encode(pad(SOURCE, 4))
    for i in range(2):  # the context vectors (decoder initial states)
        np.testing.assert_allclose(padded_state[f"h{i}"], state[f"h{i}"], atol=1e-6)
        np.testing.assert_allclose(padded_state[f"c{i}"], state[f"c{i}"], atol=1e-6)
    logits = model((SOURCE, TARGET)).numpy()
    padded = model((pad(SOURCE, 4), pad(TARGET, 3))).numpy()
    np.testing.assert_allclose(padded[:, : TARGET.shape[1]][REAL], logits[REAL], atol=1e-5)


def test_context_vector_starts_backward_lstm_at_last_real_token():
    model = tiny(encoder_layers=1)
    alone = model.encode(SOURCE[1:2, :3])  # the second sentence without any padding
    batched = model.encode(SOURCE)
    np.testing.assert_allclose(batched["h0"][1], alone["h0"][0], atol=1e-6)
    np.testing.assert_allclose(batched["c0"][1], alone["c0"][0], atol=1e-6)


@pytest.mark.parametrize("attention", ["luong", "bahdanau"])
def test_attention_weights_are_zero_on_padding_and_sum_to_one(attention):
    model = tiny(attention=attention)
    source = pad(SOURCE, 2)
    source_mask = source != 0
    weights = model.attention_weights(source, TARGET).numpy()  # [batch, tgt, src]
    assert weights.shape == (3, TARGET.shape[1], source.shape[1])
    assert np.all(weights[np.broadcast_to(~source_mask[:, None, :], weights.shape)] == 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    state = model.encode(source)
    _, state = model.decode_step(tf.fill([3], 2), state)
    step_weights = state["attention"].numpy()  # [batch, src]
    assert np.all(step_weights[~source_mask] == 0.0)
    np.testing.assert_allclose(step_weights, weights[:, 0], atol=1e-6)


def test_attention_layer_alone():
    layer = Attention(4, "bahdanau")
    memory = tf.random.normal([2, 5, 6])  # [batch, src, memory]
    mask = tf.constant([[True] * 5, [True, True, False, False, False]])
    context, weights = layer(tf.random.normal([2, 4]), memory, layer.keys(memory), mask)
    assert context.shape == (2, 6) and weights.shape == (2, 5)
    np.testing.assert_allclose(context[1], tf.linalg.matvec(memory[1], weights[1], True), 1e-5)
    assert np.all(weights.numpy()[1, 2:] == 0.0)
    with pytest.raises(ValueError, match="luong"):
        Attention(4, "dot")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(attention="none", encoder_layers=2, decoder_layers=2),
        dict(attention="luong", bridge=True, decoder_units=12, decoder_layers=2),
        dict(attention="bahdanau", tie_embeddings=True),
        dict(attention="luong", attentional_dim=8, tie_embeddings=True, decoder_layers=2),
    ],
    ids=["none", "luong", "bahdanau", "luong-narrow-feed"],
)
def test_teacher_forcing_matches_stepped_decoding(kwargs):
    model = tiny(**kwargs)
    forced = tf.nn.log_softmax(model((SOURCE, TARGET))).numpy()
    stepped = stepped_log_probs(model, SOURCE, TARGET)
    np.testing.assert_allclose(stepped[REAL], forced[REAL], atol=1e-5)


@pytest.mark.parametrize("attention", ["none", "luong"])
def test_decode_step_runs_in_a_while_loop_with_stable_state(attention):
    model = tiny(attention=attention, decoder_layers=2, encoder_layers=2)

    @tf.function
    def greedy(source):  # [batch, src] -> [batch, 4]
        state = model.encode(source)

        def body(t, tokens, out, state):
            log_probs, state = model.decode_step(tokens, state)
            tokens = tf.argmax(log_probs, -1, output_type=tf.int32)
            return t + 1, tokens, out.write(t, tokens), state

        out = tf.TensorArray(tf.int32, size=4)
        loop = (0, tf.fill([tf.shape(source)[0]], 2), out, state)
        _, _, out, _ = tf.while_loop(lambda t, *_: t < 4, body, loop)
        return tf.transpose(out.stack())

    tokens = greedy(tf.constant(SOURCE)).numpy()
    expected = []  # the same greedy search, eagerly
    state, prev = model.encode(SOURCE), tf.fill([3], 2)
    for _ in range(4):
        log_probs, state = model.decode_step(prev, state)
        prev = tf.argmax(log_probs, -1, output_type=tf.int32)
        expected.append(prev.numpy())
    np.testing.assert_array_equal(tokens, np.stack(expected, 1))


def test_attention_call_compiles_with_xla():
    model = tiny(attention="luong", decoder_layers=2, dropout=0.2)
    compiled = tf.function(lambda s, t: model((s, t)), jit_compile=True)
    np.testing.assert_allclose(compiled(SOURCE, TARGET), model((SOURCE, TARGET)), atol=1e-5)


def test_dropout_is_active_only_in_training():
    model = tiny(attention="luong", decoder_layers=2, encoder_layers=2, dropout=0.5)
    inference = model((SOURCE, TARGET)).numpy()
    np.testing.assert_array_equal(model((SOURCE, TARGET)), inference)
    assert not np.allclose(model((SOURCE, TARGET), training=True), inference, atol=1e-3)


def test_mixed_bfloat16_outputs_float32(bfloat16_policy):
    model = tiny(attention="luong", bridge=True, tie_embeddings=True)
    assert model.decoder.compute_dtype == "bfloat16"
    logits = model((SOURCE, TARGET))
    assert logits.dtype == tf.float32 and np.all(np.isfinite(logits))
    state = model.encode(SOURCE)
    log_probs, new_state = tf.function(model.decode_step)(tf.fill([3], 2), state)
    assert log_probs.dtype == tf.float32
    assert {k: v.dtype for k, v in new_state.items()} == {k: v.dtype for k, v in state.items()}


def test_config_round_trip_gives_same_model():
    model = tiny(attention="bahdanau", bridge=True, decoder_units=10, encoder_layers=2)
    clone = Seq2Seq.from_config(model.get_config())
    clone((SOURCE, TARGET))
    assert clone.get_config() == model.get_config()
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    for layer in (Encoder(10, 4, 4, 2), Bridge(6), Attention(4, "luong"), Decoder(10, 4, 4)):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


def test_build_model_is_ready_for_checkpoint_restore(tmp_path):
    config = ModelConfig(embedding_dim=8, units=8, attention="luong", decoder_layers=2)
    trained = build_model(config, SRC_VOCAB, TGT_VOCAB)
    assert trained.built and trained.weights
    path = tf.train.Checkpoint(model=trained).write(str(tmp_path / "ckpt"))
    fresh = build_model(config, SRC_VOCAB, TGT_VOCAB)
    tf.train.Checkpoint(model=fresh).read(path).assert_consumed()
    np.testing.assert_allclose(fresh((SOURCE, TARGET)), trained((SOURCE, TARGET)), atol=1e-6)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="bridge"):
        Seq2Seq(10, 10, units=4, decoder_units=6)
    with pytest.raises(ValueError, match="attention"):
        Seq2Seq(10, 10, attention="dot")
    with pytest.raises(ValueError, match="attentional_dim"):
        Seq2Seq(10, 10, attentional_dim=4)  # no attention: nothing to narrow


def test_narrow_attentional_vector_is_fed_back_and_mapped_to_the_tied_matrix():
    wide = tiny(attention="luong", tie_embeddings=True)  # decoder 16, embeddings 8
    narrow = tiny(attention="luong", tie_embeddings=True, attentional_dim=8)
    assert wide.decoder.pre_output.kernel.shape == (16, 8)
    assert narrow.decoder.pre_output.kernel.shape == (8, 8)  # a map even at the same width
    assert narrow.decoder.combine.kernel.shape == (16 + 16, 8)  # [memory + units, feed]
    assert narrow.decoder.cells[0].kernel.shape == (8 + 8, 4 * 16)  # [emb + feed, 4u]
    assert narrow.count_params() < wide.count_params()
    rebuilt = Seq2Seq.from_config(narrow.get_config())
    assert rebuilt.get_config()["attentional_dim"] == 8


def test_tiny_model_overfits_a_few_pairs():
    model = tiny(attention="luong", units=16, embedding_dim=16)
    decoder_in, labels = TARGET, np.concatenate([TARGET[:, 1:], np.zeros((3, 1), "int32")], 1)
    weights = tf.constant(labels != 0, tf.float32)
    optimizer = keras.optimizers.Adam(0.01)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            logits = model((SOURCE, decoder_in), training=True)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            loss = tf.reduce_sum(losses * weights) / tf.reduce_sum(weights)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    first = float(train_step())
    for _ in range(150):
        last = float(train_step())
    assert first > 2.5  # about log(24) at the start
    assert last < 0.05
