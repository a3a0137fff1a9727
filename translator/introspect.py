"""Looking inside a trained model: LSTM gates, cell states, gradients, context vectors, attention.

Numbers only (numpy); `translator.plots` draws them. Nothing here is on the training or
decoding path: the gate traces recompute the encoder's LSTMs step by step from their weights
(`kernel`, `recurrent_kernel`, `bias`), and the tests check that the recomputed hidden states
equal the Keras layers' outputs, so the gates drawn are the gates the model used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import sentencepiece as spm
import tensorflow as tf

from translator.api import Translator
from translator.constants import BOS_ID, EOS_ID, PAD_ID
from translator.errors import TranslatorError
from translator.pipeline import prepare_source, tokenize

if TYPE_CHECKING:
    from translator.model import Seq2Seq
    from translator.translating import BaseTranslator

EOS_PIECE = "</s>"


class IntrospectionError(TranslatorError):
    """The model cannot show what was asked (an export has no Keras model, no attention)."""


# -- inputs -----------------------------------------------------------------------------------


def source_ids(translator: BaseTranslator, texts: Sequence[str]) -> np.ndarray:
    """Source ids `[batch, src]` as the translate path builds them (`pipeline.prepare_source`):
    pieces (at most `decode.max_source_length`) + EOS, right-padded with 0."""
    translator = _with_model(translator)
    source, _ = prepare_source(
        translator.tokenizers.source,
        tf.constant(list(texts), tf.string),
        translator.config.decode.max_source_length,
    )
    return source.numpy()


def id_pieces(model: bytes, ids: Sequence[int]) -> list[str]:
    """SentencePiece pieces of `ids` (EOS as "</s>") under a serialized SentencePiece model."""
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model)
    return [EOS_PIECE if int(i) == EOS_ID else processor.IdToPiece(int(i)) for i in ids]


def _with_model(translator: BaseTranslator) -> Translator:
    """`translator` if it holds a Keras model (an `api.Translator`; an export has none)."""
    if not isinstance(translator, Translator) or translator.model is None:
        raise IntrospectionError(
            "this needs a training directory (an export has no Keras model inside)"
        )
    return translator


def _one_sentence(ids: Any) -> np.ndarray:
    """One unpadded sentence `[src]` int32 (padding would change what the LSTMs see)."""
    ids = np.asarray(ids, np.int32)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"expected the ids of one sentence, shape [src], got {ids.shape}")
    if (ids == PAD_ID).any():
        raise ValueError("the sentence's ids contain padding (id 0); strip it first")
    return ids


# -- LSTM gates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LSTMTrace:
    """One LSTM direction over one sentence, recomputed step by step from its weights.

    Every array is `[time, units]` in source order: for a backward LSTM, row t is the step
    that read token t (it ran from the last token to the first). With sigmoid gates
    i, f, o and `z = x W + h U + b` split in four:

        c_t = f_t * c_(t-1) + i_t * g_t,    h_t = o_t * tanh(c_t)

    where t-1 is the previously read position.
    """

    input_gate: np.ndarray  # i_t: how much of the candidate enters the cell
    forget_gate: np.ndarray  # f_t: how much of the previous cell state is kept
    candidate: np.ndarray  # g_t = tanh(...): the new content
    output_gate: np.ndarray  # o_t: how much of tanh(c_t) is shown as h_t
    cell: np.ndarray  # c_t: the cell state (the LSTM's memory)
    hidden: np.ndarray  # h_t: the output at position t
    backward: bool = False

    def retention(self) -> np.ndarray:
        """`[time, units]`: the product of the forget gates applied after position t was read.

        Along the cell-state path, d c_final / d c_t is exactly this product (elementwise):
        the share of what entered the cell at t that survives into the final state, and the
        factor a gradient from the context vector keeps on its way back to t. 1 for the
        last position read; near 0 means forgotten (the vanishing-gradient picture).
        """
        f = self.forget_gate[::-1] if self.backward else self.forget_gate  # reading order
        from_t = np.cumprod(f[::-1], axis=0)[::-1]  # [time, units]: prod f[t:]
        after = np.concatenate([from_t[1:], np.ones_like(f[:1])], axis=0)  # prod f[t+1:]
        return after[::-1] if self.backward else after


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def lstm_trace(
    lstm: keras.layers.Layer,
    inputs: np.ndarray,
    initial_state: tuple[np.ndarray, np.ndarray] | None = None,
) -> LSTMTrace:
    """Recomputes a Keras LSTM over one unpadded sequence in numpy, keeping every gate.

    Args:
        lstm: a `keras.layers.LSTM` (its `go_backwards` is honoured) or an `LSTMCell`, with
            Keras's default activations (tanh, sigmoid), as every LSTM of this package has.
        inputs: `[time, features]`, the layer's input sequence.
        initial_state: `(h, c)`, each `[units]`; zeros by default.

    Returns:
        The trace; its `hidden` equals the layer's output sequence.
    """
    cell = getattr(lstm, "cell", lstm)
    if (
        cell.activation is not keras.activations.tanh
        or cell.recurrent_activation is not keras.activations.sigmoid
    ):
        raise ValueError("lstm_trace supports the default LSTM activations (tanh, sigmoid) only")
    kernel = cell.kernel.numpy().astype(np.float32)  # [features, 4u]
    recurrent = cell.recurrent_kernel.numpy().astype(np.float32)  # [u, 4u]
    bias = (
        cell.bias.numpy().astype(np.float32)
        if cell.use_bias
        else np.zeros(kernel.shape[1], np.float32)
    )
    units = recurrent.shape[0]
    backward = bool(getattr(lstm, "go_backwards", False))
    x = np.asarray(inputs, np.float32)  # [time, features]
    if x.ndim != 2 or x.shape[1] != kernel.shape[0]:
        raise ValueError(f"inputs must be [time, {kernel.shape[0]}], got {x.shape}")
    if initial_state is None:
        h, c = np.zeros(units, np.float32), np.zeros(units, np.float32)
    else:
        h, c = (np.asarray(s, np.float32) for s in initial_state)
    rows: dict[str, list] = {k: [] for k in ("i", "f", "g", "o", "c", "h")}
    for x_t in x[::-1] if backward else x:
        z = x_t @ kernel + h @ recurrent + bias  # [4u], Keras's gate order: i, f, g, o
        i, f, o = _sigmoid(z[:units]), _sigmoid(z[units : 2 * units]), _sigmoid(z[3 * units :])
        g = np.tanh(z[2 * units : 3 * units])
        c = f * c + i * g
        h = o * np.tanh(c)
        for key, value in zip("ifgoch", (i, f, g, o, c, h), strict=True):
            rows[key].append(value)
    order = slice(None, None, -1) if backward else slice(None)
    arrays = {k: np.stack(v)[order] for k, v in rows.items()}  # [time, units], source order
    return LSTMTrace(
        arrays["i"], arrays["f"], arrays["g"], arrays["o"], arrays["c"], arrays["h"], backward
    )


def encoder_traces(model: Seq2Seq, ids: Sequence[int]) -> list[dict[str, LSTMTrace]]:
    """Gate traces of every encoder BiLSTM layer over one sentence, bottom layer first.

    Args:
        model: a Seq2Seq.
        ids: one sentence's source ids `[src]` without padding (a row of `source_ids`).

    Returns:
        Per layer, `{"forward": LSTMTrace, "backward": LSTMTrace}`. The top layer's final
        states are the context vector: `forward.hidden[-1]` and `backward.hidden[0]`
        concatenated give its h, `forward.cell[-1]` and `backward.cell[0]` its c.
    """
    ids = _one_sentence(ids)
    x = keras.ops.convert_to_numpy(model.encoder.embedding(ids[None]))[0]  # [src, emb]
    traces = []
    for rnn in model.encoder.rnns:
        forward = lstm_trace(rnn.forward_layer, x)
        backward = lstm_trace(rnn.backward_layer, x)
        traces.append({"forward": forward, "backward": backward})
        x = np.concatenate([forward.hidden, backward.hidden], axis=-1)  # next input [src, 2u]
    return traces


def source_gradients(model: Seq2Seq, ids: Sequence[int]) -> dict[str, np.ndarray]:
    """How much each source position can still move the context vector.

    For the top encoder layer's final forward and backward hidden states (the two halves of
    the context vector's h), the Frobenius norm of the Jacobian with respect to the source
    embedding at each position: `|| d h_final / d x_t ||`. A gradient reaching position t
    during training is this Jacobian applied to the error signal, so small values mean the
    gradient vanishes before it gets there.

    Args:
        model: a Seq2Seq.
        ids: one sentence's source ids `[src]` without padding (a row of `source_ids`).

    Returns:
        `{"forward": [src], "backward": [src]}` float64.
    """
    ids = _one_sentence(ids)
    units = model.encoder.units
    # One backward pass for every output unit: copy b of the sentence only lets unit b % units
    # of the forward (first half) or backward (second half) final state reach the loss.
    copies = tf.tile(model.encoder.embedding(tf.constant(ids[None])), [2 * units, 1, 1])
    with tf.GradientTape() as tape:
        tape.watch(copies)  # [2 * units, src, emb]
        x = copies
        for rnn in model.encoder.rnns:  # the encoder's stack; no padding, so no mask
            x, forward_h, _, backward_h, _ = rnn(x)
        finals = tf.concat([forward_h[:units], backward_h[units:]], 0)  # [2 * units, units]
        picked = tf.linalg.diag_part(tf.reshape(finals, [2, units, units]))  # [2, units]
        total = tf.reduce_sum(tf.cast(picked, tf.float32))
    rows = tf.cast(tape.gradient(total, copies), tf.float64).numpy()  # [2 * units, src, emb]
    norms = np.sqrt(np.square(rows.reshape(2, units, len(ids), -1)).sum(axis=(1, 3)))  # [2, src]
    return {"forward": norms[0], "backward": norms[1]}


# -- context vectors --------------------------------------------------------------------------


def context_vectors(
    translator: BaseTranslator, texts: Sequence[str], batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """The context vector of each sentence: the top encoder layer's final forward and backward
    `(h, c)` concatenated (before any bridge), each `[len(texts), 2 * units]` float32.

    Args:
        translator: a `Translator` loaded from a training directory.
        texts: source sentences (not empty).
        batch_size: sentences encoded at once; padding does not change a sentence's vector.
    """
    translator = _with_model(translator)
    hs, cs = [], []
    for start in range(0, len(texts), batch_size):
        ids = source_ids(translator, texts[start : start + batch_size])  # [batch, src]
        _, contexts = translator.model.encoder(tf.constant(ids))
        h, c = contexts[-1]
        hs.append(keras.ops.convert_to_numpy(keras.ops.cast(h, "float32")))
        cs.append(keras.ops.convert_to_numpy(keras.ops.cast(c, "float32")))
    return np.concatenate(hs), np.concatenate(cs)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projects `[n, d]` vectors on their two principal components.

    Returns:
        `(points [n, 2], explained [2])`: the coordinates (centred; each component's sign
        chosen so its largest loading is positive) and each component's share of the variance.
    """
    x = np.asarray(vectors, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 vectors [n, d], got shape {x.shape}")
    x = x - x.mean(axis=0)
    _, singular, components = np.linalg.svd(x, full_matrices=False)
    components = components[:2]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    points = x @ components.T  # [n, <=2]
    if points.shape[1] < 2:
        points = np.pad(points, [(0, 0), (0, 2 - points.shape[1])])
    variance = singular**2
    explained = variance[:2] / max(variance.sum(), 1e-12)
    return points, np.pad(explained, (0, 2 - len(explained)))


# -- attention --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionMap:
    """Teacher-forced attention of one sentence pair.

    Row t of `weights` is the attention while the decoder predicts target piece t (the last
    row: EOS), given `target_in[:t + 1]`; with the model's own translation as target, these
    are the weights greedy decoding used.
    """

    weights: np.ndarray  # [tgt, src] float32, rows sum to 1
    source_pieces: list[str]  # [src], "</s>" last
    target_pieces: list[str]  # [tgt], "</s>" last
    source_ids: np.ndarray  # [src] pieces + EOS
    target_in: np.ndarray  # [tgt] BOS + pieces
    translation: str


def attention_map(
    translator: BaseTranslator, text: str, translation: str | None = None, **decode_options
) -> AttentionMap:
    """The attention weights of an attention model over `text` and a translation of it.

    Args:
        translator: a `Translator` loaded from a training directory of an attention model.
        text: the source sentence.
        translation: the target side; default: the model's own translation of `text`.
        **decode_options: passed to `translator.translate` (beam_size, length_penalty, ...).

    Raises:
        IntrospectionError: the model has no attention, or `translator` is an export.
    """
    translator = _with_model(translator)
    if translator.model.attention == "none":
        raise IntrospectionError(
            f"model.attention is 'none' in {translator.config.output_dir}: attention plots "
            "need a model trained with model.attention=luong or bahdanau"
        )
    if not text.strip():
        raise IntrospectionError("attention plot: the source sentence is empty")
    if translation is None:
        decode_options = {k: v for k, v in decode_options.items() if v is not None}
        decode_options.update(n_best=1, return_scores=False, split=False)  # one sentence
        translation = translator.translate([text], **decode_options)[0]
    tokenizers = translator.tokenizers
    ids = source_ids(translator, [text])[0]  # [src]
    target = tokenize(tokenizers.target, [translation])[0].numpy()  # [pieces]
    target_in = np.concatenate([[BOS_ID], target]).astype(np.int32)  # [tgt]
    weights = translator.model.attention_weights(ids[None], target_in[None])[0]  # [tgt, src]
    return AttentionMap(
        weights=keras.ops.convert_to_numpy(weights).astype(np.float32),
        source_pieces=id_pieces(tokenizers.source_model, ids),
        target_pieces=id_pieces(tokenizers.target_model, [*target, EOS_ID]),
        source_ids=ids,
        target_in=target_in,
        translation=translation,
    )
