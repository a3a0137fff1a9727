"""The baseline to beat: the seq2seq a user writes from Keras tutorials, same sizes as ours.

What makes it "tutorial style", on purpose:

- every sentence padded to the corpus maximum length (one `[pairs, max_len]` NumPy array per
  side), float32, `model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")` and
  `model.fit` on the arrays; the softmax sits in the output layer and runs on every position,
  padding included (the embedding's `mask_zero` keeps padding out of the loss value);
- greedy decoding by a Python loop, one sentence at a time, calling an encoder model once and a
  one-token decoder model per output token, taking the argmax in NumPy. The models are called
  directly (`model(x)`), not through `model.predict`, which would be several times slower.

The architecture equals the project's reference model with `attention: none`: embedding,
BiLSTM encoder whose final forward/backward (h, c) are concatenated into the decoder's initial
state, one LSTM decoder of 2 * units, dense projection to the target vocabulary. Layers have the
same shapes as `translator.model.Seq2Seq`, so `copy_weights` can load a trained project model
into it and both decode with identical weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

BOS_ID, EOS_ID = 2, 3


def pad_corpus(
    sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads every pair to the corpus maximum: source + EOS, BOS + target, target + EOS.

    Returns:
        encoder_input [pairs, src_max], decoder_input [pairs, tgt_max], decoder_target
        [pairs, tgt_max], int32, right-padded with 0.
    """
    src_max = max(len(s) for s in sources) + 1
    tgt_max = max(len(t) for t in targets) + 1
    encoder_input = np.zeros((len(sources), src_max), np.int32)
    decoder_input = np.zeros((len(targets), tgt_max), np.int32)
    decoder_target = np.zeros((len(targets), tgt_max), np.int32)
    for i, (src, tgt) in enumerate(zip(sources, targets, strict=True)):
        encoder_input[i, : len(src) + 1] = [*src, EOS_ID]
        decoder_input[i, : len(tgt) + 1] = [BOS_ID, *tgt]
        decoder_target[i, : len(tgt) + 1] = [*tgt, EOS_ID]
    return encoder_input, decoder_input, decoder_target


def build_training_model(
    source_vocab: int, target_vocab: int, embedding_dim: int = 256, units: int = 256
) -> keras.Model:
    """The teacher-forced training model, compiled the tutorial way."""
    encoder_input = keras.Input((None,), dtype="int32", name="encoder_input")
    x = keras.layers.Embedding(source_vocab, embedding_dim, mask_zero=True, name="src_embedding")(
        encoder_input
    )
    lstm = keras.layers.LSTM(units, return_state=True)
    _, fh, fc, bh, bc = keras.layers.Bidirectional(lstm, name="encoder_bilstm")(x)
    state_h = keras.layers.Concatenate(name="state_h")([fh, bh])
    state_c = keras.layers.Concatenate(name="state_c")([fc, bc])

    decoder_input = keras.Input((None,), dtype="int32", name="decoder_input")
    y = keras.layers.Embedding(target_vocab, embedding_dim, mask_zero=True, name="tgt_embedding")(
        decoder_input
    )
    decoder_lstm = keras.layers.LSTM(
        2 * units, return_sequences=True, return_state=True, name="decoder_lstm"
    )
    y, _, _ = decoder_lstm(y, initial_state=[state_h, state_c])
    probs = keras.layers.Dense(target_vocab, activation="softmax", name="output")(y)
    model = keras.Model([encoder_input, decoder_input], probs, name="tutorial_seq2seq")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def build_inference_models(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """The tutorial's encoder model (ids -> h, c) and one-step decoder model (token, h, c ->
    probabilities, h, c), sharing the training model's layers."""
    encoder = keras.Model(
        model.get_layer("encoder_input").output,
        [model.get_layer("state_h").output, model.get_layer("state_c").output],
    )
    width = model.get_layer("decoder_lstm").units
    token = keras.Input((1,), dtype="int32", name="token")
    h_in = keras.Input((width,), name="h")
    c_in = keras.Input((width,), name="c")
    y = model.get_layer("tgt_embedding")(token)
    y, h, c = model.get_layer("decoder_lstm")(y, initial_state=[h_in, c_in])
    probs = model.get_layer("output")(y)
    decoder = keras.Model([token, h_in, c_in], [probs, h, c])
    return encoder, decoder


def copy_weights(project_model, model: keras.Model) -> None:
    """Loads a trained `translator.model.Seq2Seq` (1 layer, no attention/bridge/tying) here."""
    if (
        project_model.attention != "none"
        or project_model.bridge
        or project_model.tie_embeddings
        or project_model.encoder_layers != 1
        or project_model.decoder_layers != 1
    ):
        raise ValueError("the tutorial baseline has 1 layer, no attention, bridge or tying")
    pairs = {
        "src_embedding": project_model.encoder.embedding,
        "encoder_bilstm": project_model.encoder.bilstm_0,
        "tgt_embedding": project_model.decoder.embedding,
        "decoder_lstm": project_model.decoder.lstm_0,
        "output": project_model.decoder.output_dense,
    }
    for name, layer in pairs.items():
        model.get_layer(name).set_weights([np.asarray(w) for w in layer.get_weights()])


def greedy_translate(
    encoder: keras.Model,
    decoder: keras.Model,
    sources: Sequence[Sequence[int]],
    max_lengths: Sequence[int],
) -> list[list[int]]:
    """Greedy decoding, one sentence and one token at a time, in a Python loop.

    Args:
        sources: source ids per sentence, without EOS.
        max_lengths: maximum output tokens per sentence, EOS counted.

    Returns:
        Output ids per sentence, without BOS/EOS.
    """
    outputs = []
    for source, limit in zip(sources, max_lengths, strict=True):
        h, c = encoder(np.array([[*source, EOS_ID]], np.int32), training=False)
        token, ids = BOS_ID, []
        for _ in range(limit):
            step_input = keras.ops.convert_to_tensor([[token]], "int32")
            probs, h, c = decoder([step_input, h, c], training=False)
            token = int(np.argmax(probs[0, -1]))
            if token == EOS_ID:
                break
            ids.append(token)
        outputs.append(ids)
    return outputs
