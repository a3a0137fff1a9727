"""Tests for translator.lstm: the fast loop equals keras.layers.LSTM, forward and backward."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from translator.config import ModelConfig, config_from_dict
from translator.errors import ConfigError
from translator.lstm import LSTM, StepMatmul, add_bias, lstm_cell, recurrence, uses_fast_loop
from translator.model import Seq2Seq, build_model

BATCH, TIME, FEATURES, UNITS = 4, 6, 5, 7
LENGTHS = [6, 4, 1, 3]  # right padding; the longest row has none
MASK = tf.sequence_mask(LENGTHS, TIME)  # [batch, time]


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    keras.mixed_precision.set_global_policy("float32")


def _normal(*shape, seed: int = 0) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).normal(size=shape), tf.float32)


def _pair(**kwargs) -> tuple[keras.layers.LSTM, LSTM]:
    """A Keras LSTM and a fast one with the same random weights (a nonzero bias included)."""
    reference = keras.layers.LSTM(UNITS, **kwargs)
    fast = LSTM(UNITS, kind="fast", **kwargs)
    for layer in (reference, fast):
        layer.build((None, None, FEATURES))
    fast.set_weights(reference.get_weights())
    fast.cell.bias.assign(_normal(4 * UNITS, seed=9))
    reference.cell.bias.assign(_normal(4 * UNITS, seed=9))
    return reference, fast


def _loss_and_grads(layer, x, mask, initial_state) -> list[tf.Tensor]:
    """Outputs and gradients of a weighted sum of every output w.r.t. inputs and weights."""
    sources = [x] + ([] if initial_state is None else list(initial_state))
    with tf.GradientTape() as tape:
        tape.watch(sources)
        outs = layer(x, mask=mask, initial_state=initial_state)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        loss = sum(
            tf.reduce_sum(tf.cast(o, tf.float32) * _normal(*o.shape, seed=i))
            for i, o in enumerate(outs)
        )
    grads = tape.gradient(loss, sources + layer.trainable_weights)
    return list(outs) + grads


def _assert_all_close(got: list, expected: list, atol: float, rtol: float = 0.0) -> None:
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), atol=atol, rtol=rtol, err_msg=f"item {i}"
        )


@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("masked", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
def test_outputs_and_gradients_equal_keras(go_backwards, with_state, masked, return_sequences):
    reference, fast = _pair(
        return_sequences=return_sequences, return_state=True, go_backwards=go_backwards
    )
    x = _normal(BATCH, TIME, FEATURES, seed=1)
    state = [_normal(BATCH, UNITS, seed=2), _normal(BATCH, UNITS, seed=3)] if with_state else None
    mask = MASK if masked else None
    expected = _loss_and_grads(reference, x, mask, state)
    got = _loss_and_grads(fast, x, mask, state)
    _assert_all_close(got, expected, atol=1e-5)
    graph = tf.function(lambda: _loss_and_grads(fast, x, mask, state))  # inside a tf.function
    _assert_all_close(graph(), expected, atol=1e-5)


def test_masked_outputs_carry_or_zero_like_keras():
    reference, fast = _pair(return_sequences=True, go_backwards=True)
    x = _normal(BATCH, TIME, FEATURES, seed=1)
    for zero in (False, True):
        reference.zero_output_for_mask = fast.zero_output_for_mask = zero
        expected = reference(x, mask=MASK).numpy()
        np.testing.assert_allclose(fast(x, mask=MASK), expected, atol=1e-6)
        # go_backwards returns the reversed sequence: padding comes first and outputs zero
        assert np.all(expected[2, : TIME - LENGTHS[2]] == 0)


MASKS = {
    # an empty row keeps the initial state; the right-padded loop gathers it differently
    "right_padded_with_empty_row": tf.sequence_mask([6, 0, 1, 3], TIME),
    # not right padding: a hole and left padding take the general masked loop
    "holes": tf.constant([[1, 1, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [0] * 6]) > 0,
}


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("zero", [False, True], ids=["carry_output", "zero_output"])
def test_inference_equals_keras_for_any_mask(mask_name, go_backwards, zero):
    reference, fast = _pair(return_sequences=True, return_state=True, go_backwards=go_backwards)
    reference.zero_output_for_mask = fast.zero_output_for_mask = zero
    x = _normal(BATCH, TIME, FEATURES, seed=1)
    state = [_normal(BATCH, UNITS, seed=2), _normal(BATCH, UNITS, seed=3)]
    expected = reference(x, mask=MASKS[mask_name], initial_state=state)
    got = fast(x, mask=MASKS[mask_name], initial_state=state)
    _assert_all_close(got, expected, atol=1e-6)
    graph = tf.function(lambda: fast(x, mask=MASKS[mask_name], initial_state=state))
    _assert_all_close(graph(), expected, atol=1e-6)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_bidirectional_equals_keras_and_starts_backward_at_last_real_token(with_state):
    layers = []
    for lstm in _pair(return_sequences=True, return_state=True, name="lstm"):
        layer = keras.layers.Bidirectional(lstm)
        layer.build((None, None, FEATURES))
        layers.append(layer)
    layers[1].set_weights(layers[0].get_weights())
    assert [w.path for w in layers[1].weights] == [w.path for w in layers[0].weights]
    assert isinstance(layers[1].backward_layer, LSTM) and layers[1].backward_layer.kind == "fast"
    x = _normal(BATCH, TIME, FEATURES, seed=1)
    state = [_normal(BATCH, UNITS, seed=s) for s in range(2, 6)] if with_state else None
    expected = _loss_and_grads(layers[0], x, MASK, state)
    got = _loss_and_grads(layers[1], x, MASK, state)
    _assert_all_close(got, expected, atol=1e-5)
    if not with_state:  # a padded row's states equal those of the row alone, unpadded
        alone = layers[1](x[1:2, : LENGTHS[1]])
        for batched, single in zip(got[1:5], alone[1:], strict=True):
            np.testing.assert_allclose(batched[1], single[0], atol=1e-6)


def test_step_equals_one_step_of_the_sequence_and_keras_cell():
    reference, fast = _pair(return_sequences=True, return_state=True)
    x = _normal(BATCH, 1, FEATURES, seed=1)
    state = [_normal(BATCH, UNITS, seed=2), _normal(BATCH, UNITS, seed=3)]
    _, h, c = fast(x, initial_state=state)
    out, (h_step, c_step) = fast.step(x[:, 0], state)
    np.testing.assert_allclose(h_step, h, atol=1e-6)
    np.testing.assert_allclose(c_step, c, atol=1e-6)
    np.testing.assert_array_equal(out, h_step)
    cell_out, (cell_h, cell_c) = reference.cell(x[:, 0], state)
    np.testing.assert_array_equal(h_step, cell_h)  # same operation order as Keras's cell
    np.testing.assert_array_equal(c_step, cell_c)
    weights = fast.cast_weights()
    np.testing.assert_array_equal(fast.step(x[:, 0], state, weights)[0], h_step)


def test_recurrence_gradients_match_autodiff_of_the_cell():
    """The hand-written backward pass against autodiff through a Python loop of lstm_cell."""
    xz = _normal(TIME, BATCH, 4 * UNITS, seed=1)
    h0, c0 = _normal(BATCH, UNITS, seed=2), _normal(BATCH, UNITS, seed=3)
    recurrent = _normal(UNITS, 4 * UNITS, seed=4) * 0.3
    keep = tf.transpose(MASK)[:, :, None]
    w_h, w_c = _normal(TIME, BATCH, UNITS, seed=5), _normal(BATCH, UNITS, seed=6)

    def looped(xz, h0, c0, recurrent):
        h, c, hs = h0, c0, []
        for t in range(TIME):
            h_new, c_new = lstm_cell(xz[t] + h @ recurrent, c)
            h, c = tf.where(keep[t], h_new, h), tf.where(keep[t], c_new, c)
            hs.append(h)
        return tf.stack(hs), c

    results = []
    for fn in (looped, lambda *a: recurrence(*a, keep=keep)):
        sources = [xz, h0, c0, recurrent]
        with tf.GradientTape() as tape:
            tape.watch(sources)
            hs, c = fn(*sources)
            loss = tf.reduce_sum(hs * w_h) + tf.reduce_sum(c * w_c)
        results.append([hs, c] + tape.gradient(loss, sources))
    _assert_all_close(results[1], results[0], atol=1e-5)


def test_step_matmul_gives_the_gradients_of_per_step_matmuls():
    inputs = _normal(TIME, BATCH, 3, seed=1)  # a_t, [time, batch, k]
    offsets = _normal(TIME, BATCH, 8, seed=2)
    weight = _normal(3, 8, seed=3)
    w_out = _normal(TIME, BATCH, 8, seed=4)

    def run(fused: bool):
        with tf.GradientTape() as tape:
            tape.watch([inputs, offsets, weight])
            step = StepMatmul(weight, offsets) if fused else None
            outs = tf.TensorArray(tf.float32, size=TIME)
            offset_ta = tf.TensorArray(tf.float32, size=TIME).unstack(
                step.offsets if fused else offsets
            )
            for t in range(TIME):
                a = tf.tanh(inputs[t])
                z = (step.multiply(a) if fused else a @ weight) + offset_ta.read(t)
                outs = outs.write(t, tf.sin(z))
            if fused:
                step.set_inputs(tf.tanh(inputs))
            loss = tf.reduce_sum(outs.stack() * w_out)
        return tape.gradient(loss, [inputs, offsets, weight])

    _assert_all_close(run(True), run(False), atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_add_bias_gradients_equal_autodiff_of_a_broadcast_add(dtype):
    """The bias gradient (a matmul by a row of ones) is the sum over every leading axis."""
    x = tf.cast(_normal(3, 4, 5, seed=1), dtype)  # [batch, time, n]: two leading axes
    bias = tf.Variable(_normal(5, seed=2))  # float32, cast inside like the model's
    upstream = _normal(3, 4, 5, seed=3)

    def grads(add):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.cast(add(x, bias), tf.float32) * upstream)
        return tape.gradient(y, [x, bias])

    got = grads(add_bias)
    expected = grads(lambda x, b: x + tf.cast(b, x.dtype))
    assert got[1].dtype == tf.float32 and got[0].dtype == x.dtype
    np.testing.assert_allclose(tf.cast(got[0], tf.float32), tf.cast(expected[0], tf.float32))
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-2 if dtype == "bfloat16" else 1e-5)
    np.testing.assert_allclose(got[1], tf.reduce_sum(upstream, [0, 1]), rtol=2e-2, atol=2e-2)


def test_mixed_bfloat16_casts_once_and_stays_close_to_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    bf16 = _pair(return_sequences=True, return_state=True)[1]
    keras.mixed_precision.set_global_policy("float32")
    f32 = _pair(return_sequences=True, return_state=True)[1]
    f32.set_weights(bf16.get_weights())
    assert bf16.cell.kernel.dtype == "float32" and bf16.compute_dtype == "bfloat16"
    assert all(w.dtype == tf.bfloat16 for w in bf16.cast_weights())
    x = _normal(BATCH, TIME, FEATURES, seed=1)
    expected = _loss_and_grads(f32, x, MASK, None)
    got = _loss_and_grads(bf16, x, MASK, None)
    assert got[0].dtype == tf.bfloat16
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        b = b.numpy()
        scale = np.abs(b).max()
        np.testing.assert_allclose(
            tf.cast(a, tf.float32), b, atol=0.03 * scale, err_msg=f"item {i}"
        )
    assert got[3].dtype == tf.float32  # the kernel's gradient is float32, like its variable


def test_kind_is_validated_and_serialized():
    layer = LSTM(3, kind="keras", return_sequences=True)
    clone = LSTM.from_config(layer.get_config())
    assert clone.kind == "keras" and clone.return_sequences and clone.name == layer.name
    with pytest.raises(ValueError, match="kind"):
        LSTM(3, kind="cudnn")
    assert uses_fast_loop("fast") and not uses_fast_loop("keras")
    assert uses_fast_loop("auto") == (not tf.config.list_logical_devices("GPU"))


# -- the switch in the model: model.lstm = keras | fast ---------------------------------------

SRC_VOCAB, TGT_VOCAB = 20, 24
SOURCE = np.array([[5, 6, 7, 8, 3], [9, 4, 3, 0, 0], [11, 3, 0, 0, 0]], "int32")  # [batch, src]
TARGET_IN = np.array([[2, 4, 5, 6, 7], [2, 8, 9, 0, 0], [2, 10, 0, 0, 0]], "int32")
TARGET_OUT = np.array([[4, 5, 6, 7, 3], [8, 9, 3, 0, 0], [10, 3, 0, 0, 0]], "int32")
MODELS = {
    "none": dict(encoder_layers=2, decoder_layers=2),
    "luong": dict(attention="luong", decoder_layers=2, dropout=0.3),
    "bahdanau": dict(attention="bahdanau", bridge=True, decoder_units=6),
    "luong-narrow-feed": dict(attention="luong", attentional_dim=8, tie_embeddings=True),
}


def _model(lstm: str, **kwargs) -> Seq2Seq:
    config = ModelConfig(**{"embedding_dim": 8, "units": 8, "lstm": lstm, **kwargs})
    return build_model(config, SRC_VOCAB, TGT_VOCAB)


def _loss(model: Seq2Seq, training: bool = False) -> tf.Tensor:
    logits = model((SOURCE, TARGET_IN), training=training)  # [batch, tgt, vocab]
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(TARGET_OUT, logits)
    weights = tf.cast(TARGET_OUT != 0, tf.float32)
    return tf.reduce_sum(losses * weights) / tf.reduce_sum(weights)


@pytest.mark.parametrize("name", list(MODELS))
def test_seq2seq_loss_and_gradients_equal_with_both_switches(name):
    models = {}
    for kind in ("keras", "fast"):  # the same seed: the same dropout masks in both
        keras.utils.set_random_seed(7)
        models[kind] = _model(kind, **MODELS[name])
    models["fast"].set_weights(models["keras"].get_weights())
    results = {}
    for kind, model in models.items():
        with tf.GradientTape() as tape:
            loss = _loss(model, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        assert all(g is not None for g in grads)
        results[kind] = [loss] + [tf.convert_to_tensor(g) for g in grads]
    _assert_all_close(results["fast"], results["keras"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["none", "luong"])
def test_checkpoint_written_with_one_switch_loads_into_the_other(tmp_path, name):
    for written, read in (("keras", "fast"), ("fast", "keras")):
        keras.backend.clear_session()  # the same automatic layer names (lstm, lstm_1, ...)
        source = _model(written, **MODELS[name])
        path = tf.train.Checkpoint(model=source).write(str(tmp_path / f"{written}-{name}"))
        keras.backend.clear_session()
        target = _model(read, **MODELS[name])
        assert [w.path for w in target.weights] == [w.path for w in source.weights]
        tf.train.Checkpoint(model=target).read(path).assert_consumed()
        np.testing.assert_allclose(
            target((SOURCE, TARGET_IN)), source((SOURCE, TARGET_IN)), atol=1e-5
        )


def test_switch_is_in_the_config_and_the_model_config():
    model = _model("keras")
    assert model.get_config()["lstm"] == "keras"
    assert Seq2Seq.from_config(model.get_config()).encoder.bilstm_0.forward_layer.kind == "keras"
    assert ModelConfig().lstm == "auto"
    with pytest.raises(ConfigError, match="model.lstm"):
        config_from_dict({"model": {"lstm": "cudnn"}})


def test_short_training_with_the_fast_lstm_lowers_the_loss():
    model = _model("fast", attention="luong", units=16, embedding_dim=16)
    optimizer = keras.optimizers.Adam(0.01)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = _loss(model, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    losses = [float(train_step()) for _ in range(40)]
    assert losses[0] > 2.5  # about log(24) at the start
    assert losses[-1] < 0.3 * losses[0]
