"""Plots and introspection: the numbers drawn are the model's numbers, the PNGs have their size.

Models here are untrained (random weights, random biases so the gates are not all near 0.5):
what is checked is that the recomputed gates, gradients, context vectors and attention are
the ones the Keras model computes, and that each figure draws exactly the returned data.
"""

from __future__ import annotations

import json
import struct

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from translator import introspect, plots
from translator.api import Translator
from translator.cli import main
from translator.config import ModelConfig, dump_config
from translator.model import build_model
from translator.tokenizer import BOS_ID, EOS_ID, load_or_train


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG file's IHDR chunk."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", raw[16:24])


def randomise_biases(model, seed: int = 0) -> None:
    """Random LSTM biases: gates spread over (0, 1) instead of sitting near 0.5."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if "bias" in variable.path and "lstm" in variable.path:
            variable.assign(rng.normal(0.0, 1.5, variable.shape).astype("float32"))


def random_model(**overrides):
    keras.utils.set_random_seed(3)
    config = ModelConfig(**{"embedding_dim": 8, "units": 6, **overrides})
    model = build_model(config, 40, 40)
    randomise_biases(model)
    return model


@pytest.fixture(scope="module")
def attention_dir(synthetic_files, tmp_path_factory):
    """A model directory as training leaves it (config, SentencePiece models, a checkpoint),
    holding an untrained attention model: enough for everything that reads a model."""
    return _model_dir(synthetic_files, tmp_path_factory.mktemp("attn") / "run", "luong")


@pytest.fixture(scope="module")
def plain_dir(synthetic_files, tmp_path_factory):
    return _model_dir(synthetic_files, tmp_path_factory.mktemp("plain") / "run", "none")


def _model_dir(files, out, attention: str):
    config = tiny_config(
        files,
        out,
        (
            f"model.attention={attention}",
            "model.units=8",
            "model.embedding_dim=8",
            "decode.max_length=12",
        ),
    )
    out.mkdir(parents=True)
    sources = files["train.src"].read_text().splitlines()
    targets = files["train.tgt"].read_text().splitlines()
    tokenizers = load_or_train(out, sources, targets, config.tokenizer)
    keras.utils.set_random_seed(5)
    model = build_model(config.model, tokenizers.source_vocab_size, tokenizers.target_vocab_size)
    randomise_biases(model)
    dump_config(config, out / "config.yaml")
    tf.train.Checkpoint(model=model).save(str(out / "checkpoints" / "ckpt"))
    return out


@pytest.fixture(scope="module")
def sentences(synthetic_files) -> list[str]:
    return synthetic_files["valid.src"].read_text().splitlines()[:40]


# -- gates ------------------------------------------------------------------------------------


def test_encoder_traces_reproduce_every_keras_layer_output():
    model = random_model(encoder_layers=2)
    ids = np.array([5, 9, 4, 17, 22, 8, EOS_ID], np.int32)
    traces = introspect.encoder_traces(model, ids)
    assert len(traces) == 2
    x = model.encoder.embedding(ids[None])
    _, contexts = model.encoder(ids[None])
    for layer, rnn in enumerate(model.encoder.rnns):
        x, fh, fc, bh, bc = (t.numpy() for t in rnn(x))
        forward, backward = traces[layer]["forward"], traces[layer]["backward"]
        assert not forward.backward and backward.backward
        derived = np.concatenate([forward.hidden, backward.hidden], axis=-1)  # [src, 2u]
        np.testing.assert_allclose(derived, x[0], atol=1e-5)
        np.testing.assert_allclose(forward.hidden[-1], fh[0], atol=1e-5)
        np.testing.assert_allclose(forward.cell[-1], fc[0], atol=1e-5)
        np.testing.assert_allclose(backward.hidden[0], bh[0], atol=1e-5)  # read last
        np.testing.assert_allclose(backward.cell[0], bc[0], atol=1e-5)
        h, c = contexts[layer]
        np.testing.assert_allclose(np.concatenate([fh, bh], -1), h.numpy(), atol=1e-6)
        np.testing.assert_allclose(np.concatenate([fc, bc], -1), c.numpy(), atol=1e-6)
        x = tf.constant(x)
    gates = traces[0]["forward"].forget_gate
    assert gates.min() < 0.2 and gates.max() > 0.8  # random biases spread the gates
    for trace in (traces[0]["forward"], traces[1]["backward"]):
        # The LSTM equations hold between the recorded arrays, in reading order.
        c_prev = np.zeros_like(trace.cell)
        if trace.backward:
            c_prev[:-1] = trace.cell[1:]
        else:
            c_prev[1:] = trace.cell[:-1]
        np.testing.assert_allclose(
            trace.cell, trace.forget_gate * c_prev + trace.input_gate * trace.candidate, atol=1e-6
        )
        np.testing.assert_allclose(trace.hidden, trace.output_gate * np.tanh(trace.cell), atol=1e-6)


def test_lstm_trace_with_an_initial_state_matches_keras_both_directions():
    keras.utils.set_random_seed(1)
    x = np.random.default_rng(1).normal(size=(5, 3)).astype("float32")
    h0, c0 = (np.random.default_rng(s).normal(size=4).astype("float32") for s in (2, 3))
    for go_backwards in (False, True):
        lstm = keras.layers.LSTM(4, return_sequences=True, go_backwards=go_backwards)
        out = lstm(x[None], initial_state=[h0[None], c0[None]]).numpy()[0]
        trace = introspect.lstm_trace(lstm, x, (h0, c0))
        # Keras returns a go_backwards layer's outputs in reading order.
        want = out[::-1] if go_backwards else out
        np.testing.assert_allclose(trace.hidden, want, atol=1e-5)
    with pytest.raises(ValueError, match="inputs must be"):
        introspect.lstm_trace(lstm, x[:, :2])
    with pytest.raises(ValueError, match="activations"):
        introspect.lstm_trace(keras.layers.LSTM(2, activation="relu").cell, x)


def test_retention_is_the_product_of_later_forget_gates():
    model = random_model()
    ids = np.array([5, 9, 4, 17, EOS_ID], np.int32)
    layer = introspect.encoder_traces(model, ids)[0]
    forward, backward = layer["forward"], layer["backward"]
    n = len(ids)
    for t in range(n):
        np.testing.assert_allclose(
            forward.retention()[t], np.prod(forward.forget_gate[t + 1 :], axis=0), rtol=1e-6
        )
        np.testing.assert_allclose(
            backward.retention()[t], np.prod(backward.forget_gate[:t], axis=0), rtol=1e-6
        )
    assert np.all(forward.retention()[-1] == 1) and np.all(backward.retention()[0] == 1)


def test_source_gradients_equal_autodiff_through_the_encoder():
    model = random_model(units=4)
    ids = np.array([5, 9, 4, 17, 22, EOS_ID], np.int32)  # distinct ids: one embedding row each
    got = introspect.source_gradients(model, ids)
    table = model.encoder.embedding.embeddings.value  # the tf.Variable
    with tf.GradientTape(persistent=True) as tape:
        h, _ = model.encoder(ids[None])[1][-1]  # [1, 2 * units]: forward, backward
    squares = np.zeros((2, len(ids)))
    for j in range(h.shape[1]):
        pick = tf.one_hot([j], h.shape[1])  # d h[0, j] / d table
        grad = tape.gradient(h, table, output_gradients=pick)
        rows = tf.convert_to_tensor(grad).numpy()[ids]  # [src, emb]
        squares[j // 4] += np.square(rows).sum(axis=1)
    np.testing.assert_allclose(got["forward"], np.sqrt(squares[0]), rtol=1e-4)
    np.testing.assert_allclose(got["backward"], np.sqrt(squares[1]), rtol=1e-4)
    with pytest.raises(ValueError, match="padding"):
        introspect.source_gradients(model, [5, 9, 0])


def test_plot_gates_draws_the_trace_of_the_chosen_units(tmp_path):
    model = random_model(units=6)
    ids = np.array([5, 9, 4, 17, 22, 8, 30, EOS_ID], np.int32)
    trace = introspect.encoder_traces(model, ids)[0]["backward"]
    tokens = [f"t{i}" for i in ids]
    fig, data = plots.plot_gates(trace, tokens, units=3, path=tmp_path / "gates.png")
    most_varying = np.sort(np.argsort(-trace.cell.std(axis=0))[:3])
    np.testing.assert_array_equal(data["units"], most_varying)
    keys = ("input_gate", "forget_gate", "output_gate", "cell")
    for ax, key in zip(fig.axes[:4], keys, strict=True):  # then come the 4 colour bars
        drawn = np.asarray(ax.images[0].get_array())  # [units, time]
        np.testing.assert_array_equal(drawn, getattr(trace, key)[:, most_varying].T)
        np.testing.assert_array_equal(data[key], getattr(trace, key)[:, most_varying])
    assert [t.get_text() for t in fig.axes[3].get_xticklabels()] == tokens
    assert png_size(tmp_path / "gates.png") == (600, 900)  # 6 inches (the minimum) x 9, 100 dpi
    _, data = plots.plot_gates(trace, tokens, units=[0, 5])
    np.testing.assert_array_equal(data["forget_gate"], trace.forget_gate[:, [0, 5]])
    with pytest.raises(ValueError, match="tokens"):
        plots.plot_gates(trace, tokens[:-1])


def test_plot_gradient_flow_draws_retention_and_gradients(tmp_path):
    model = random_model()
    ids = np.arange(4, 4 + 40, dtype=np.int32) % 36 + 4  # 40 positions: the widest figure
    layer = introspect.encoder_traces(model, ids)[-1]
    gradients = introspect.source_gradients(model, ids)
    tokens = [str(i) for i in ids]
    fig, data = plots.plot_gradient_flow(layer, gradients, tokens, tmp_path / "flow.png")
    top, bottom = fig.axes
    np.testing.assert_allclose(top.lines[0].get_ydata(), layer["forward"].retention().mean(1))
    np.testing.assert_allclose(top.lines[1].get_ydata(), data["retention_backward"])
    np.testing.assert_allclose(bottom.lines[0].get_ydata(), gradients["forward"])
    np.testing.assert_allclose(bottom.lines[1].get_ydata(), data["gradient_backward"])
    assert png_size(tmp_path / "flow.png") == (1500, 600)  # 3 + 0.3 * 40 = 15 inches


# -- context vectors --------------------------------------------------------------------------


def test_context_vectors_are_the_decoder_start_and_pca_is_exact(plain_dir, sentences, tmp_path):
    translator = Translator.load(plain_dir)
    h, c = introspect.context_vectors(translator, sentences, batch_size=16)  # 3 batches
    assert h.shape == c.shape == (len(sentences), 16)
    ids = introspect.source_ids(translator, sentences)
    assert (ids[:, 0] != 0).all() and ((ids == EOS_ID).sum(axis=1) == 1).all()
    state = translator.model.encode(ids)  # no bridge: the context vector starts the decoder
    np.testing.assert_allclose(h, state["h0"].numpy(), atol=1e-6)
    np.testing.assert_allclose(c, state["c0"].numpy(), atol=1e-6)
    # Padding must not change a sentence's context vector.
    alone = introspect.context_vectors(translator, sentences[:1])[0]
    np.testing.assert_allclose(alone[0], h[0], atol=1e-5)

    lengths = (ids != 0).sum(axis=1)
    fig, data = plots.plot_context_vectors(h, lengths, path=tmp_path / "ctx.png")
    centred = h - h.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centred.T))
    top = eigenvectors[:, ::-1][:, :2]
    np.testing.assert_allclose(np.abs(data["points"]), np.abs(centred @ top), atol=1e-4)
    np.testing.assert_allclose(
        data["explained"], eigenvalues[::-1][:2] / eigenvalues.sum(), rtol=1e-4
    )
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets(), data["points"])
    np.testing.assert_array_equal(fig.axes[0].collections[0].get_array(), lengths)
    assert png_size(tmp_path / "ctx.png") == (700, 550)

    topics = np.where(lengths > np.median(lengths), "long", "short")
    fig, data = plots.plot_context_vectors(h, topics, label="length class")
    assert len(fig.axes[0].collections) == 2
    assert fig.axes[0].get_legend().get_title().get_text() == "length class"
    with pytest.raises(ValueError, match="values"):
        plots.plot_context_vectors(h, lengths[:-1])


# -- attention --------------------------------------------------------------------------------


def test_attention_map_is_the_models_attention(attention_dir, sentences, tmp_path):
    translator = Translator.load(attention_dir)
    text = sentences[0]
    amap = introspect.attention_map(translator, text)
    assert amap.translation == translator.translate([text])[0]
    ids = introspect.source_ids(translator, [text])
    np.testing.assert_array_equal(amap.source_ids, ids[0])
    want = translator.model.attention_weights(ids, amap.target_in[None]).numpy()[0]
    np.testing.assert_allclose(amap.weights, want, atol=1e-6)
    np.testing.assert_allclose(amap.weights.sum(axis=1), 1.0, atol=1e-5)
    assert amap.target_in[0] == BOS_ID
    assert amap.weights.shape == (len(amap.target_pieces), len(amap.source_pieces))
    assert amap.source_pieces[-1] == amap.target_pieces[-1] == "</s>"
    assert "".join(amap.source_pieces[:-1]).replace("▁", " ").strip() == text

    # Step by step, as decoding runs it, the decoder attends exactly the same way.
    state = translator.model.encode(ids)
    for t, token in enumerate(amap.target_in):
        _, state = translator.model.decode_step(tf.constant([token]), state)
        np.testing.assert_allclose(state["attention"].numpy()[0], amap.weights[t], atol=1e-5)

    with pytest.raises(introspect.IntrospectionError, match="empty"):
        introspect.attention_map(translator, " ")
    forced = introspect.attention_map(translator, text, translation="the red dog")
    assert forced.translation == "the red dog"
    assert "".join(forced.target_pieces[:-1]).replace("▁", " ").strip() == "the red dog"

    fig, drawn = plots.plot_attention(forced, tmp_path / "attention.png")
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), forced.weights)
    assert drawn is forced.weights
    src, tgt = len(forced.source_pieces), len(forced.target_pieces)
    want_size = (round(100 * (2.5 + 0.35 * src)), round(100 * (2 + 0.3 * tgt)))
    assert png_size(tmp_path / "attention.png") == want_size


def test_attention_needs_an_attention_model_from_a_training_dir(plain_dir, sentences):
    translator = Translator.load(plain_dir)
    with pytest.raises(introspect.IntrospectionError, match="model.attention"):
        introspect.attention_map(translator, sentences[0])
    exported = Translator(None, None, translator.config)
    with pytest.raises(introspect.IntrospectionError, match="training directory"):
        introspect.context_vectors(exported, sentences)


# -- training curves and latency --------------------------------------------------------------

HISTORY = [
    {"epoch": 1, "step": 10, "train_loss": 5.0, "valid_loss": 4.5, "valid_bleu": 1.0,
     "valid_chrf": 10.0},
    {"epoch": 2, "step": 20, "train_loss": 4.0, "valid_loss": 3.9, "valid_bleu": 7.5,
     "valid_chrf": 25.0},
    {"epoch": 3, "step": 30, "train_loss": 3.5, "valid_loss": 4.1, "valid_bleu": 6.0,
     "valid_chrf": 24.0},
]  # fmt: skip


def test_history_plots_draw_history_json(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps(HISTORY))
    paths = plots.write_history_plots(tmp_path)
    assert paths == [tmp_path / "plots" / "loss.png", tmp_path / "plots" / "scores.png"]
    assert [png_size(p) for p in paths] == [(600, 400), (600, 400)]

    fig, data = plots.plot_loss(tmp_path / "history.json")
    train, valid = fig.axes[0].lines
    np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(train.get_ydata(), [5.0, 4.0, 3.5])
    np.testing.assert_array_equal(valid.get_ydata(), data["valid_loss"])
    np.testing.assert_array_equal(data["valid_loss"], [4.5, 3.9, 4.1])
    fig, data = plots.plot_scores(HISTORY)
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), [1.0, 7.5, 6.0])
    np.testing.assert_array_equal(fig.axes[0].lines[1].get_ydata(), [10.0, 25.0, 24.0])
    assert data["best_epoch"] == 2 and fig.axes[0].lines[2].get_xdata()[0] == 2


def test_history_without_validation_and_bad_histories(tmp_path):
    no_valid = [{k: r[k] for k in ("epoch", "step", "train_loss")} for r in HISTORY]
    (tmp_path / "history.json").write_text(json.dumps(no_valid))
    assert plots.write_history_plots(tmp_path, tmp_path / "out") == [tmp_path / "out/loss.png"]
    _, data = plots.plot_loss(no_valid)
    assert set(data) == {"epoch", "train_loss"}
    with pytest.raises(plots.PlotError, match="no validation BLEU"):
        plots.plot_scores(no_valid)
    with pytest.raises(plots.PlotError, match="not found"):
        plots.load_history(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(plots.PlotError, match="not valid JSON"):
        plots.load_history(tmp_path / "bad.json")
    with pytest.raises(plots.PlotError, match="'train_loss' must be a number"):
        plots.plot_loss([{"epoch": 1, "train_loss": "low"}])
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(plots.PlotError, match="non-empty list"):
        plots.load_history(tmp_path / "empty.json")


def test_plot_latency_reports_what_it_draws(tmp_path):
    samples = {"greedy": [0.010, 0.020, 0.030, 0.040], "beam": [0.1, 0.2]}
    fig, data = plots.plot_latency(samples, tmp_path / "latency.png")
    assert data["greedy"] == {"n": 4, "median_ms": 25.0, "p90_ms": 37.0, "max_ms": 40.0}
    assert data["beam"]["median_ms"] == pytest.approx(150.0)
    dots = [line for line in fig.axes[0].lines if line.get_marker() == "."]
    np.testing.assert_allclose(dots[0].get_xdata(), [10.0, 20.0, 30.0, 40.0])
    assert png_size(tmp_path / "latency.png") == (700, 250)
    with pytest.raises(ValueError):
        plots.plot_latency({"x": []})


# -- CLI --------------------------------------------------------------------------------------


def test_cli_plot_history(tmp_path, capsys):
    (tmp_path / "history.json").write_text(json.dumps(HISTORY))
    assert main(["plot-history", str(tmp_path), "--output", str(tmp_path / "png")]) == 0
    written = json.loads(capsys.readouterr().out)["plots"]
    assert written == [str(tmp_path / "png" / "loss.png"), str(tmp_path / "png" / "scores.png")]
    assert main(["plot-history", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no training history") and len(err.strip().splitlines()) == 1


def test_cli_translate_attention_plot(attention_dir, plain_dir, sentences, tmp_path, capsys):
    source = tmp_path / "one.txt"
    source.write_text(sentences[1] + "\n")
    png = tmp_path / "attention.png"
    argv = ["translate", "--model", str(attention_dir), "--input", str(source)]
    assert main([*argv, "--attention-plot", str(png), "--beam-size", "2"]) == 0
    printed = capsys.readouterr().out.strip()
    translator = Translator.load(attention_dir)
    assert printed == translator.translate([sentences[1]], beam_size=2)[0]
    amap = introspect.attention_map(translator, sentences[1], printed)
    src, tgt = len(amap.source_pieces), len(amap.target_pieces)
    assert png_size(png) == (round(100 * (2.5 + 0.35 * src)), round(100 * (2 + 0.3 * tgt)))

    source.write_text(sentences[1] + "\n" + sentences[2] + "\n")
    assert main([*argv, "--attention-plot", str(tmp_path / "two.png")]) == 2
    assert "exactly one input sentence, got 2" in capsys.readouterr().err
    source.write_text(sentences[1] + "\n")
    plain = ["translate", "--model", str(plain_dir), "--input", str(source)]
    assert main([*plain, "--attention-plot", str(tmp_path / "none.png")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "model.attention is 'none'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "two.png").exists() and not (tmp_path / "none.png").exists()
