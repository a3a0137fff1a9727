"""The LSTM decoder of the seq2seq model: teacher forcing over a whole target, one step at a
time for decoding, optional attention with input feeding, the vocabulary projection.

Kept apart from `translator.layers` (encoder, bridge, attention) for its size: the attention
decoder's teacher forcing has two loops, Keras's cells and the project's fused one.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from translator.layers import Attention, _build, _numbered
from translator.lstm import (
    LSTM,
    StepMatmul,
    add_bias,
    lstm_cell,
    project,
    time_array,
    uses_fast_loop,
)


@keras.saving.register_keras_serializable(package="translator")
class Decoder(keras.layers.Layer):
    """Stacked LSTM decoder with optional attention (input feeding) and a vocabulary projection.

    `call(target_in [batch, tgt], state)` teacher-forces a whole sequence and returns float32
    logits `[batch, tgt, vocab]` (plus float32 attention weights `[batch, tgt, src]` with
    `return_attention=True`). `step(tokens [batch], state)` advances one token and returns
    `(logits [batch, vocab], new_state)`. The state is a flat dict built by `initial_state`:
    `h{i}`, `c{i}` per layer and, with attention, `memory`, `keys`, `feed` (compute dtype),
    `memory_mask` (bool) and `attention` (float32, the last step's weights).

    Without attention, `call` runs `translator.lstm.LSTM` layers (Keras's weights; cuDNN on a
    GPU). With attention, the previous attentional vector is concatenated to each input
    embedding, so `call` loops over time with a `tf.while_loop`: around the same code as `step`
    with `lstm` "keras", or (`_teacher_force_fast`) with the embedding half of the first
    kernel's input projection computed for all steps before the loop and every weight gradient
    computed after it in one matmul.

    Args:
        vocab_size: target vocabulary size (id 0 is padding).
        embedding_dim: width of the target embeddings.
        units: LSTM width of every decoder layer.
        num_layers: number of stacked LSTM layers.
        dropout: rate on the embeddings, between layers and before the projection.
        attention: "none", "luong" or "bahdanau".
        tie_embeddings: reuse the embedding matrix as the output projection, after a linear map
            to `embedding_dim` (`pre_output`) when `output_width` differs or `attentional_dim`
            is set.
        memory_dim: width of the encoder memory (needed with attention).
        lstm: LSTM loop, "auto", "fast" or "keras" (`translator.lstm.LSTM`'s `kind`).
        attentional_dim: with attention, the width of the attentional vector `feed` (the input
            fed to the next step and the vocabulary projection's input); 0 means `units`.
            With tied embeddings it is mapped linearly to `embedding_dim` even at that width:
            without the map, a 30-minute de->en run's validation loss trailed by 0.5 after one
            epoch (probably the tanh-bounded vector times the shared matrix; RESULTS.md).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        units: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        attention: str = "none",
        tie_embeddings: bool = False,
        memory_dim: int = 0,
        lstm: str = "auto",
        attentional_dim: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if attention not in ("none", "luong", "bahdanau"):
            raise ValueError(f"attention must be none, luong or bahdanau, got {attention!r}")
        if attention != "none" and memory_dim <= 0:
            raise ValueError("memory_dim must be positive with attention")
        if attentional_dim < 0 or (attentional_dim and attention == "none"):
            raise ValueError("attentional_dim must be 0, or positive with attention")
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.num_layers = num_layers
        self.dropout = dropout
        self.attention = attention
        self.tie_embeddings = tie_embeddings
        self.memory_dim = memory_dim
        self.lstm = lstm
        self.attentional_dim = attentional_dim
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.drop = keras.layers.Dropout(dropout)
        for i in range(num_layers):
            if attention == "none":
                rnn = LSTM(units, kind=lstm, return_sequences=True, return_state=True)
                setattr(self, f"lstm_{i}", rnn)
            else:
                setattr(self, f"cell_{i}", keras.layers.LSTMCell(units, name=f"cell_{i}"))
        if attention != "none":
            self.attention_layer = Attention(units, attention, name="attention")
            self.combine = keras.layers.Dense(
                self.feed_dim, activation="tanh", use_bias=False, name="combine"
            )
        if tie_embeddings:
            if self.maps_output:
                self.pre_output = keras.layers.Dense(embedding_dim, name="pre_output")
        else:
            self.output_dense = keras.layers.Dense(vocab_size, name="output_dense")

    @property
    def feed_dim(self) -> int:
        """Width of the attentional vector fed to the next step (0 without attention)."""
        return 0 if self.attention == "none" else self.attentional_dim or self.units

    @property
    def output_width(self) -> int:
        """Width of what the vocabulary projection reads: the attentional vector, or the top
        LSTM's output without attention."""
        return self.feed_dim or self.units

    @property
    def maps_output(self) -> bool:
        """Whether a tied output layer maps its input to `embedding_dim` first (`pre_output`)."""
        return self.tie_embeddings and (
            self.output_width != self.embedding_dim or self.attentional_dim > 0
        )

    @property
    def rnns(self) -> list[LSTM]:
        """The stacked `LSTM` layers (attention "none"), bottom first."""
        return _numbered(self, "lstm", self.num_layers)

    @property
    def cells(self) -> list:
        """The stacked `LSTMCell`s (with attention), bottom first."""
        return _numbered(self, "cell", self.num_layers)

    def build(self, input_shape):
        # Everything is built here, not lazily, so no variable is created in the while loop.
        _build(self.embedding, (None, None))
        for i in range(self.num_layers):
            in_dim = self.embedding_dim + self.feed_dim if i == 0 else self.units
            if self.attention == "none":
                _build(self.rnns[i], (None, None, in_dim))
            else:
                _build(self.cells[i], (None, in_dim))
        if self.attention != "none":
            _build(self.attention_layer, (None, self.units), (None, None, self.memory_dim))
            _build(self.combine, (None, self.units + self.memory_dim))
        if self.tie_embeddings:
            if self.maps_output:
                _build(self.pre_output, (None, self.output_width))
            self.output_bias = self.add_weight(
                shape=(self.vocab_size,), initializer="zeros", name="output_bias"
            )
        else:
            _build(self.output_dense, (None, self.output_width))

    def initial_state(self, contexts, memory=None, memory_mask=None) -> dict:
        """Flat state dict from per-layer `(h, c)` `[batch, units]` and the encoder memory."""
        state = {}
        for i, (h, c) in enumerate(contexts):
            state[f"h{i}"], state[f"c{i}"] = h, c
        if self.attention != "none":
            state["memory"] = memory  # [batch, src, memory_dim]
            state["keys"] = self.attention_layer.keys(memory)  # [batch, src, units]
            state["memory_mask"] = ops.cast(memory_mask, "bool")  # [batch, src]
            h = contexts[0][0]
            state["feed"] = ops.zeros((ops.shape(h)[0], self.feed_dim), h.dtype)  # [batch, feed]
            state["attention"] = ops.zeros(ops.shape(memory_mask), "float32")  # [batch, src]
        return state

    def project(self, x):
        """Float32 logits `[..., vocab]` from decoder outputs `[..., output_width]`.

        In bfloat16 the vocabulary bias is added after the cast to float32: TensorFlow fuses a
        matmul with the add that follows it, and its fused bfloat16 kernel ran 2 to 4 times
        slower than the plain bfloat16 matmul on an AMX CPU (RESULTS.md), and its gradient is a
        matmul (`translator.lstm.add_bias`). In float32 the computation is the one Keras's
        `Dense` does.
        """
        if self.tie_embeddings:
            if self.maps_output:
                x = self.pre_output(x)
            matrix = ops.transpose(ops.cast(self.embedding.embeddings, x.dtype))  # [emb, vocab]
            bias = self.output_bias
        elif x.dtype == "float32":
            return self.output_dense(x)
        else:
            matrix, bias = ops.cast(self.output_dense.kernel, x.dtype), self.output_dense.bias
        return add_bias(ops.cast(ops.matmul(x, matrix), "float32"), bias)

    def _attend(self, emb, state, masks=None, training=False):
        """One input-feeding step; `masks` are this step's between-layer dropout masks."""
        new = dict(state)
        x = ops.concatenate([emb, ops.cast(state["feed"], emb.dtype)], -1)  # [batch, emb + feed]
        for i, cell in enumerate(self.cells):
            if i > 0 and masks is not None:
                x = x * masks[i - 1]
            x, (new[f"h{i}"], new[f"c{i}"]) = cell(
                x, [state[f"h{i}"], state[f"c{i}"]], training=training
            )
        return self._attention_step(x, state, new)

    def _attention_step(self, x, state, new: dict, combine=None) -> dict:
        """Attention from the top LSTM output `x` `[batch, units]`; sets `feed`, `attention`.

        `combine` maps `concat([context, x])` to the pre-tanh feed; None uses `self.combine`.
        """
        context, weights = self.attention_layer(
            x, state["memory"], state["keys"], state["memory_mask"]
        )
        both = ops.concatenate([context, x], -1)  # [batch, memory + units]
        new["feed"] = self.combine(both) if combine is None else ops.tanh(combine(both))
        new["attention"] = weights  # [batch, src]
        return new

    def step(self, tokens, state: dict, training=False):
        """Advances one token: `tokens` `[batch]` -> `(logits [batch, vocab] float32, state)`."""
        x = self.embedding(tokens)  # [batch, emb]
        if self.attention == "none":
            new = dict(state)
            for i, rnn in enumerate(self.rnns):
                x, (new[f"h{i}"], new[f"c{i}"]) = rnn.step(x, [state[f"h{i}"], state[f"c{i}"]])
            return self.project(x), new
        new = self._attend(x, state, training=training)
        return self.project(new["feed"]), new

    def features(self, target_in, state, training=False):
        """Teacher-forced outputs before the vocabulary projection.

        Returns `(features [batch, tgt, output_width], weights)`, weights being the float32
        attention `[batch, tgt, src]` or None; `project(features)` equals `call`'s logits. The
        trainer projects only the features of real (non-pad) target tokens.
        """
        x = self.drop(self.embedding(target_in), training=training)  # [batch, tgt, emb]
        if self.attention == "none":
            for i, rnn in enumerate(self.rnns):
                if i > 0:
                    x = self.drop(x, training=training)
                x = rnn(x, initial_state=[state[f"h{i}"], state[f"c{i}"]], training=training)[0]
            return self.drop(x, training=training), None
        if uses_fast_loop(self.lstm):
            feeds, weights = self._teacher_force_fast(x, state, training)
        else:
            feeds, weights = self._teacher_force(x, state, training)
        return self.drop(feeds, training=training), weights

    def call(self, target_in, state, training=False, return_attention=False):
        if return_attention and self.attention == "none":
            raise ValueError("return_attention needs a decoder with attention")
        features, weights = self.features(target_in, state, training=training)
        logits = self.project(features)  # [batch, tgt, vocab]
        return (logits, weights) if return_attention else logits

    def _dropout_masks(self, x, steps, training):
        """Between-layer dropout masks `[tgt, layers-1, batch, units]` (0 or 1/keep), or None."""
        if not (training and self.dropout > 0 and self.num_layers > 1):
            return None
        ones = ops.ones((steps, self.num_layers - 1, ops.shape(x)[0], self.units), x.dtype)
        return self.drop(ones, training=True)

    def _teacher_force(self, x, state, training):
        """Runs `_attend` over time: x `[batch, tgt, emb]` -> feeds, weights (batch-major)."""
        steps = ops.shape(x)[1]
        inputs = ops.transpose(x, (1, 0, 2))  # [tgt, batch, emb]
        masks = self._dropout_masks(x, steps, training)
        names = [f"{kind}{i}" for i in range(self.num_layers) for kind in "hc"] + ["feed"]
        carried = {k: state[k] for k in names}  # changes each step; the rest is fixed
        fixed = {k: v for k, v in state.items() if k not in carried}
        feed_ta = tf.TensorArray(x.dtype, size=steps, element_shape=state["feed"].shape)
        weight_ta = tf.TensorArray("float32", size=steps, element_shape=state["attention"].shape)

        def body(t, carry, feed_ta, weight_ta):
            step_masks = None if masks is None else masks[t]
            new = self._attend(inputs[t], {**carry, **fixed}, step_masks, training)
            feed_ta = feed_ta.write(t, new["feed"])
            weight_ta = weight_ta.write(t, new["attention"])
            return t + 1, {k: new[k] for k in carry}, feed_ta, weight_ta

        _, _, feed_ta, weight_ta = tf.while_loop(
            lambda t, *_: t < steps,
            body,
            (tf.constant(0), carried, feed_ta, weight_ta),
            maximum_iterations=steps,
        )
        feeds = ops.transpose(feed_ta.stack(), (1, 0, 2))  # [batch, tgt, feed]
        weights = ops.transpose(weight_ta.stack(), (1, 0, 2))  # [batch, tgt, src]
        return feeds, weights

    def _step_matmuls(self, inputs, steps, batch) -> list[StepMatmul]:
        """One `StepMatmul` per LSTM layer, then one for `combine`, weights cast once.

        Layer 0's offsets are the embedding half of its input projection for all steps (one
        matmul, plus the bias), so its step multiplies only `concat([feed, h])` by
        `concat([kernel_feed_rows, recurrent_kernel])`; an upper layer's step multiplies
        `concat([x, h])` by `concat([kernel, recurrent_kernel])`. LSTM offsets are float32 (the
        cell's elementwise work is, see `translator.lstm.recurrence`).
        """
        dtype = inputs.dtype
        plans = []
        for i, cell in enumerate(self.cells):
            kernel, recurrent = ops.cast(cell.kernel, dtype), ops.cast(cell.recurrent_kernel, dtype)
            if i == 0:  # split, not sliced: the gradient of a split is a cheap concat
                emb_rows, kernel = tf.split(kernel, [self.embedding_dim, self.feed_dim], 0)
                offsets = project(inputs, emb_rows, ops.cast(cell.bias, dtype))  # [tgt, b, 4u]
            else:
                offsets = ops.broadcast_to(cell.bias, (steps, batch, 4 * self.units))
            weight = ops.concatenate([kernel, recurrent], 0)  # [in + units, 4u]
            plans.append(StepMatmul(weight, ops.cast(offsets, "float32")))
        combine = ops.cast(self.combine.kernel, dtype)  # [memory + units, feed]
        plans.append(StepMatmul(combine, ops.zeros((steps, batch, self.feed_dim), dtype)))
        return plans

    def _teacher_force_fast(self, x, state, training):
        """`_teacher_force` with fewer, larger matmuls (the same results within rounding).

        Weights are cast once before the loop and their gradients computed after it, one
        matmul each (`_step_matmuls`); the LSTM cell state and elementwise work are float32.
        """
        steps = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
        dtype = x.dtype
        masks = self._dropout_masks(x, steps, training)
        plans = self._step_matmuls(ops.transpose(x, (1, 0, 2)), steps, ops.shape(x)[0])
        offset_tas = [time_array(p.offsets, steps, f"offsets_{i}") for i, p in enumerate(plans)]
        names = [f"{kind}{i}" for i in range(self.num_layers) for kind in "hc"] + ["feed"]
        carried = {k: ops.cast(state[k], "float32" if k[0] == "c" else dtype) for k in names}
        fixed = {k: v for k, v in state.items() if k not in carried}
        arrays = {  # per-step outputs and the per-step matmul inputs StepMatmul needs
            "feed": tf.TensorArray(dtype, size=steps, element_shape=state["feed"].shape),
            "attention": tf.TensorArray(
                "float32", size=steps, element_shape=state["attention"].shape
            ),
            **{
                f"a{i}": tf.TensorArray(dtype, size=steps, element_shape=(None, p.weight.shape[0]))
                for i, p in enumerate(plans)
            },
        }

        def matmul(i, t, a, arrays):  # plans[i] at step t; a: [batch, k]
            arrays[f"a{i}"] = arrays[f"a{i}"].write(t, a)
            offsets = offset_tas[i].read(t)
            return ops.cast(plans[i].multiply(a), offsets.dtype) + offsets

        def body(t, carry, arrays):
            arrays, new = dict(arrays), {}
            x = carry["feed"]  # layer 0: only the feed half is left to multiply
            for i in range(self.num_layers):
                if i > 0 and masks is not None:
                    x = x * masks[t][i - 1]
                a = ops.concatenate([x, carry[f"h{i}"]], -1)  # [batch, in + units]
                h, new[f"c{i}"] = lstm_cell(matmul(i, t, a, arrays), carry[f"c{i}"])
                x = new[f"h{i}"] = ops.cast(h, dtype)
            new = self._attention_step(
                x, {**carry, **fixed}, new, lambda both: matmul(len(plans) - 1, t, both, arrays)
            )
            arrays["feed"] = arrays["feed"].write(t, new["feed"])
            arrays["attention"] = arrays["attention"].write(t, new["attention"])
            return t + 1, {k: new[k] for k in carry}, arrays

        _, _, arrays = tf.while_loop(
            lambda t, *_: t < steps,
            body,
            (tf.constant(0), carried, arrays),
            maximum_iterations=steps,
        )
        for i, plan in enumerate(plans):
            plan.set_inputs(arrays[f"a{i}"].stack())  # [tgt, batch, k]
        feeds = ops.transpose(arrays["feed"].stack(), (1, 0, 2))  # [batch, tgt, feed]
        weights = ops.transpose(arrays["attention"].stack(), (1, 0, 2))  # [batch, tgt, src]
        return feeds, weights

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            embedding_dim=self.embedding_dim,
            units=self.units,
            num_layers=self.num_layers,
            dropout=self.dropout,
            attention=self.attention,
            tie_embeddings=self.tie_embeddings,
            memory_dim=self.memory_dim,
            lstm=self.lstm,
            attentional_dim=self.attentional_dim,
        )
        return config
