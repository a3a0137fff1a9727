"""The decoder's step as greedy and beam search run it: set up once per call, lean per step.

`Decoder.step` calls the Keras layers, which read every weight inside the search's
`tf.while_loop`: under `mixed_bfloat16` that is a float32 -> bfloat16 cast of every weight
(the output projection's `units x vocab` kernel included) at every step, and beam search
gathers the encoder memory and keys (which never change) at every step. `search_step` builds
the callback once per translate call, before the loop:

- every weight is cast to the compute dtype once, and stored transposed (`[out, in]`, the way
  round `_matmul` multiplies it; the tied output matrix already is), or not at all:
  `store_weights` keeps the cast copies in variables (a bfloat16 `Translator` does at load,
  an export saves them), so a call reads bfloat16 weights and casts nothing (for one sentence
  the casts of a call cost more than the steps they speed up);
- `memory`, `keys` and `memory_mask` stay out of the loop state (repeated `beam_size` times
  up front), and the previous step's attention weights, which decoding never reads, are not
  carried;
- in bfloat16, `[input, h]` is multiplied by the stacked `[kernel; recurrent_kernel]` in one
  matmul, the output projection runs in bfloat16, and the LSTM cell's elementwise work, its
  cell state and the logits' bias add are float32 (bfloat16 elementwise kernels are slower on
  CPU, and the cell state keeps its precision, as in `translator.lstm`).

In float32 there is no cast to save: the step is `Decoder.step` itself (the layers' own
operations) with the fixed state closed over, so translations are bitwise those of
`Seq2Seq.decode_step` (tested; even an equivalent reordering, e.g. a transpose hoisted out of
the loop, moved a score by one ulp).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import tensorflow as tf
from keras import ops

from translator.constants import TOP_K_BLOCK
from translator.lstm import lstm_cell

if TYPE_CHECKING:
    from translator.decoder import Decoder

FIXED = ("memory", "keys", "memory_mask")  # encoder-side state: the same at every step
UNUSED = ("attention",)  # carried by teacher forcing for heatmaps; a search never reads it
STORED = "_stored_search_weights"  # the Decoder attribute `store_weights` sets


def _weights(decoder: Decoder) -> dict:
    """Every weight a bfloat16 step multiplies by, cast once and transposed (`_matmul`): each
    LSTM layer's kernels stacked, `[4u, in + units]`, with a float32 bias; the combination
    kernel; the output matrix `[vocab, in]` (the tied embedding matrix as it is) with a float32
    bias."""
    dtype = decoder.compute_dtype

    def cast_t(v):
        return ops.transpose(ops.cast(v, dtype))

    cells = decoder.cells if decoder.attention != "none" else [r.cell for r in decoder.rnns]
    w: dict = {}
    for i, cell in enumerate(cells):
        stacked = cast_t(ops.concatenate([cell.kernel, cell.recurrent_kernel], 0))
        w[f"lstm{i}"] = (stacked, cell.bias if cell.use_bias else None)
    if decoder.attention != "none":
        w["combine"] = cast_t(decoder.combine.kernel)
        w["attention"] = decoder.attention_layer.cast_weights()
    if decoder.tie_embeddings:
        if decoder.maps_output:
            kernel, bias = decoder.pre_output.kernel, decoder.pre_output.bias
            w["pre_output"] = (cast_t(kernel), ops.cast(bias, dtype))
        kernel, bias = ops.cast(decoder.embedding.embeddings, dtype), decoder.output_bias
    else:
        kernel, bias = cast_t(decoder.output_dense.kernel), decoder.output_dense.bias
    # Padding tokens up to a multiple of TOP_K_BLOCK (zero weights, bias -inf: probability 0,
    # never chosen) spare beam search's top-k a copy of the logits to pad them (RESULTS.md).
    vocab, width = kernel.shape
    pad = (-vocab) % TOP_K_BLOCK
    if pad:
        bias = ops.zeros((vocab,), "float32") if bias is None else ops.cast(bias, "float32")
        kernel = ops.concatenate([kernel, ops.zeros((pad, width), kernel.dtype)], 0)
        bias = ops.concatenate([bias, ops.full((pad,), float("-inf"))], 0)
    w["output"] = (kernel, bias)
    return w


def store_weights(decoder: Decoder) -> list[tf.Variable]:
    """Casts the weights a bfloat16 step multiplies by once, now, into variables that every
    later `search_step` of `decoder` reads instead of casting per call; returns the new
    variables (non-trainable; an export must hold them). Nothing to store in float32.

    The values are the casts a call would compute, so translations do not change. The
    variables are kept out of the Keras layer's tracking (they are not model weights and no
    checkpoint holds them); restore weights before storing, they are not kept in sync.
    """
    if decoder.compute_dtype == "float32":
        return []
    new: list[tf.Variable] = []

    def keep(value):
        if value is None or isinstance(value, (tf.Variable, keras.Variable)):
            return value  # float32 biases: read as they are
        new.append(tf.Variable(value, trainable=False, name=f"stored_{len(new)}"))
        return new[-1]

    weights = tf.nest.map_structure(keep, _weights(decoder))
    object.__setattr__(decoder, STORED, (weights, new))  # not a Keras-tracked attribute
    return new


def stored_variables(decoder: Decoder) -> list[tf.Variable]:
    """The variables `store_weights` made for `decoder` (empty if it made none)."""
    return list(getattr(decoder, STORED, ({}, []))[1])


def _matmul(x, transposed, weight_first: bool = True):
    """`x @ weight` for `x` `[N, in]` and the weight stored transposed, `[out, in]`.

    Which way round pays depends on the shape (AMX CPU, bfloat16, `benchmarks/matmul_orders.py`
    in RESULTS.md): the LSTM's stacked `[4u, in + u]` ran faster as `(weight^T @ x^T)^T`
    (`weight_first`) from 1 row to 320; as `x @ (weight^T)^T` (`transpose_b`, no copy of a
    wide result) the combination matrix ran 1.8 times faster at 5 and 64 rows (even at 320)
    and the output matrix 1.2 and 1.4 times at 64 and 320, both slower at one row (where a
    call decodes in float32 by default, `FLOAT32_BELOW_ROWS`).
    """
    if weight_first:
        return ops.transpose(tf.matmul(transposed, x, transpose_b=True))
    return tf.matmul(x, transposed, transpose_b=True)


def _lstm(x, h, c, weights):
    """One LSTM layer's `(h, c)`: one matmul of `[x, h]` in bfloat16, the cell in float32."""
    stacked, bias = weights
    z = ops.cast(_matmul(ops.concatenate([x, h], -1), stacked), "float32")  # [N, 4u]
    if bias is not None:
        z = z + bias
    h, c = lstm_cell(z, c)
    return ops.cast(h, x.dtype), c


def _project(x, w: dict):
    """Float32 logits `[N, vocab]`: the matmul in bfloat16, the bias added in float32."""
    if "pre_output" in w:
        kernel, bias = w["pre_output"]
        x = ops.add(_matmul(x, kernel, weight_first=False), bias)
    kernel, bias = w["output"]
    return ops.cast(_matmul(x, kernel, weight_first=False), "float32") + bias


def search_step(decoder: Decoder, state: dict, beam_size: int = 1, fixed_in_state: bool = False):
    """The step callback a search runs, and the state it starts from.

    Args:
        decoder: the model's `Decoder`.
        state: `Seq2Seq.encode`'s output `[batch, ...]`.
        beam_size: rows per sentence the search will run (the state is given per sentence;
            `beam_search` repeats the returned state, the fixed part is repeated here).
        fixed_in_state: carry the fixed encoder-side state in the loop state too, which is
            then a pair `(carried, fixed)` whose second part the step passes through unchanged
            (given per sentence, not repeated here): every per-row tensor is in the loop state,
            so a search can drop rows (`greedy_search`'s and `beam_search`'s `compact`; beam
            search with `fixed=True`).

    Returns:
        `(step, loop_state)`: `step(tokens [N], loop_state) -> (logits [N, vocab] float32,
        loop_state)` (in bfloat16, `vocab` padded to a multiple of `TOP_K_BLOCK` with logits
        -inf, tokens of probability 0) and the initial loop state `[batch, ...]` (`h{i}`,
        `c{i}` per layer and, with attention, `feed`; `c{i}` float32 in bfloat16; with
        `fixed_in_state`, the pair of it and the fixed state).
    """
    fixed = {k: state[k] for k in FIXED if k in state}
    if beam_size > 1 and not fixed_in_state:
        fixed = {k: tf.repeat(v, beam_size, axis=0) for k, v in fixed.items()}
    carried = {k: v for k, v in state.items() if k not in FIXED and k not in UNUSED}
    if decoder.compute_dtype == "float32":  # no casts to save: the layers' own operations

        def float32_step(tokens, carry):
            carry, fixed_now = carry if fixed_in_state else (carry, fixed)
            logits, new = decoder.step(tokens, {**fixed_now, **carry})
            new = {k: new[k] for k in carry}
            return logits, (new, fixed_now) if fixed_in_state else new

        return float32_step, (carried, fixed) if fixed_in_state else carried
    # the cell state stays float32 through the loop
    carried = {k: ops.cast(v, "float32") if k[0] == "c" else v for k, v in carried.items()}
    w = getattr(decoder, STORED, (None,))[0] or _weights(decoder)
    embeddings = decoder.embedding.embeddings
    attention = decoder.attention != "none"

    def step(tokens, carry):  # name scopes: for profiles (benchmarks/decode_step.py)
        carry, fixed_now = carry if fixed_in_state else (carry, fixed)
        with tf.name_scope("embedding"):
            x = ops.cast(ops.take(embeddings, tokens, axis=0), decoder.compute_dtype)  # [N, emb]
        new = {}
        if attention:  # input feeding
            x = ops.concatenate([x, ops.cast(carry["feed"], x.dtype)], -1)
        for i in range(decoder.num_layers):
            with tf.name_scope(f"lstm{i}"):
                x, new[f"c{i}"] = _lstm(x, carry[f"h{i}"], carry[f"c{i}"], w[f"lstm{i}"])
            new[f"h{i}"] = x
        if attention:
            context, _ = decoder.attention_layer(
                x,
                fixed_now["memory"],
                fixed_now["keys"],
                fixed_now["memory_mask"],
                weights=w["attention"],
            )
            with tf.name_scope("combine"):
                both = ops.concatenate([context, x], -1)  # [N, memory + units]
                x = new["feed"] = ops.tanh(_matmul(both, w["combine"], weight_first=False))
        with tf.name_scope("output"):
            return _project(x, w), (new, fixed_now) if fixed_in_state else new

    return step, (carried, fixed) if fixed_in_state else carried
