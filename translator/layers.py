"""Keras layers of the seq2seq model: BiLSTM encoder, bridge and attention (the LSTM decoder
is in `translator.decoder`).

Every LSTM keeps Keras's default activations, no recurrent dropout and `unroll=False`, so GPU
users get the fused cuDNN kernel. `lstm` ("auto", "fast", "keras") picks the loop over time:
`translator.lstm`'s on CPU, Keras's (cuDNN) on a GPU; the weights are the same either way.
Batches are right-padded with id 0 and masks come from ids.
"""

from __future__ import annotations

import keras
from keras import ops

from translator.constants import PAD_ID
from translator.lstm import LSTM

_NEG_INF = -1e9  # masked attention score: exp() underflows to exactly 0 in float32


def _build(layer: keras.layers.Layer, *shapes) -> None:
    """Builds a sublayer unless it is built already (it may have been called on its own)."""
    if not layer.built:
        layer.build(*shapes)


def _numbered(owner: keras.layers.Layer, prefix: str, count: int) -> list:
    """Sublayers stored as attributes `prefix_0`, `prefix_1`, ...

    Keras 3 keeps Python lists of layers in a TrackedList that tf.train.Checkpoint does not
    see, so each stacked layer is its own attribute (checkpoints then hold every variable).
    """
    return [getattr(owner, f"{prefix}_{i}") for i in range(count)]


@keras.saving.register_keras_serializable(package="translator")
class Encoder(keras.layers.Layer):
    """Embedding and stacked bidirectional LSTMs over right-padded source ids.

    Calling it on `source_ids` `[batch, src]` returns `(memory, contexts)`: the top layer's
    sequence `[batch, src, 2 * units]` (zero at padding) and, per layer, the context vector
    `(h, c)`, each `[batch, 2 * units]`: final forward and backward states concatenated. The
    mask makes the backward LSTM start at each sentence's last real token.

    Args:
        vocab_size: source vocabulary size (id 0 is padding).
        embedding_dim: width of the source embeddings.
        units: LSTM units per direction.
        num_layers: number of stacked BiLSTM layers.
        dropout: rate on the embeddings and between layers.
        lstm: LSTM loop, "auto", "fast" or "keras" (`translator.lstm.LSTM`'s `kind`).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        units: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        lstm: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.num_layers = num_layers
        self.dropout = dropout
        self.lstm = lstm
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.drop = keras.layers.Dropout(dropout)
        for i in range(num_layers):
            lstm = LSTM(units, kind=self.lstm, return_sequences=True, return_state=True)
            setattr(self, f"bilstm_{i}", keras.layers.Bidirectional(lstm, name=f"bilstm_{i}"))

    @property
    def rnns(self) -> list:
        """The stacked `Bidirectional(LSTM)` layers, bottom first."""
        return _numbered(self, "bilstm", self.num_layers)

    def build(self, input_shape):
        _build(self.embedding, input_shape)
        for i, rnn in enumerate(self.rnns):
            _build(rnn, (None, None, self.embedding_dim if i == 0 else 2 * self.units))

    def call(self, source_ids, training=False):
        mask = ops.not_equal(source_ids, PAD_ID)  # [batch, src]
        x = self.drop(self.embedding(source_ids), training=training)  # [batch, src, emb]
        contexts = []
        for i, rnn in enumerate(self.rnns):
            if i > 0:
                x = self.drop(x, training=training)
            x, fh, fc, bh, bc = rnn(x, mask=mask, training=training)  # x: [batch, src, 2*units]
            contexts.append((ops.concatenate([fh, bh], -1), ops.concatenate([fc, bc], -1)))
        x = x * ops.cast(mask, x.dtype)[:, :, None]  # exact zeros at padding
        return x, contexts

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            embedding_dim=self.embedding_dim,
            units=self.units,
            num_layers=self.num_layers,
            dropout=self.dropout,
            lstm=self.lstm,
        )
        return config


@keras.saving.register_keras_serializable(package="translator")
class Bridge(keras.layers.Layer):
    """Dense tanh map from one context vector `(h, c)` to a decoder layer's initial state.

    Args:
        units: decoder width; both outputs are `[batch, units]`.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense_h = keras.layers.Dense(units, activation="tanh", name="dense_h")
        self.dense_c = keras.layers.Dense(units, activation="tanh", name="dense_c")

    def build(self, input_shape):
        if isinstance(input_shape[0], (tuple, list)):  # called on (h, c): their shapes
            input_shape = input_shape[0]
        _build(self.dense_h, input_shape)
        _build(self.dense_c, input_shape)

    def call(self, state):
        h, c = state  # [batch, context]
        return self.dense_h(h), self.dense_c(c)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="translator")
class Attention(keras.layers.Layer):
    """Global attention over the encoder memory: Luong "general" or Bahdanau (additive) scores.

    `keys(memory)` precomputes the memory projection once per sentence; calling the layer on
    `(query [batch, q], memory [batch, src, m], keys, memory_mask [batch, src])` returns
    `(context [batch, m], weights [batch, src])`; `weights=cast_weights()` reuses weights
    cast once (a decoding loop's). Weights are float32, sum to 1 over real
    tokens and are exactly 0 at padding.

    Args:
        units: query width (and, for Bahdanau, the width of the additive layer).
        kind: "luong" or "bahdanau".
    """

    def __init__(self, units: int, kind: str = "luong", **kwargs):
        super().__init__(**kwargs)
        if kind not in ("luong", "bahdanau"):
            raise ValueError(f"attention kind must be 'luong' or 'bahdanau', got {kind!r}")
        self.units = units
        self.kind = kind
        self.memory_dense = keras.layers.Dense(units, use_bias=False, name="memory_dense")
        if kind == "bahdanau":
            self.query_dense = keras.layers.Dense(units, name="query_dense")
            self.v = keras.layers.Dense(1, use_bias=False, name="v")

    def build(self, query_shape, memory_shape):
        _build(self.memory_dense, memory_shape)
        if self.kind == "bahdanau":
            _build(self.query_dense, query_shape)
            _build(self.v, (None, None, self.units))

    def keys(self, memory):
        """Projects the memory `[batch, src, m]` to keys `[batch, src, units]`."""
        return self.memory_dense(memory)

    def cast_weights(self) -> tuple:
        """The weights a call multiplies by, cast once to the compute dtype: `()` for Luong,
        `(query kernel, query bias, v kernel)` for Bahdanau; pass them as `call(weights=)`
        to keep the casts out of a decoding loop."""
        if self.kind == "luong":
            return ()
        dense = (self.query_dense.kernel, self.query_dense.bias, self.v.kernel)
        return tuple(ops.cast(w, self.compute_dtype) for w in dense)

    def call(self, query, memory, keys, memory_mask, weights=None):
        if self.kind == "luong":
            scores = ops.einsum("bu,bsu->bs", query, keys)  # [batch, src]
        else:
            if weights is None:
                projected, v = self.query_dense(query), self.v
            else:  # the layers' own operations on weights cast before the loop
                projected = ops.add(ops.matmul(query, weights[0]), weights[1])

                def v(x):
                    return ops.matmul(x, weights[2])

            hidden = ops.tanh(keys + projected[:, None, :])  # [batch, src, units]
            scores = ops.squeeze(v(hidden), -1)  # [batch, src]
        scores = ops.where(memory_mask, ops.cast(scores, "float32"), _NEG_INF)
        weights = ops.softmax(scores, axis=-1) * ops.cast(memory_mask, "float32")  # [batch, src]
        context = ops.einsum("bs,bsm->bm", ops.cast(weights, memory.dtype), memory)
        return context, weights

    def get_config(self):
        return {**super().get_config(), "units": self.units, "kind": self.kind}
