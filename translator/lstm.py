"""The project's LSTM: Keras's weights and checkpoints, a faster loop over time on CPU.

On CPU, Keras 3's LSTM runs the generic RNN loop: every step multiplies that step's input by
the kernel, casts the float32 weights to the compute dtype (under `mixed_bfloat16`) and, in the
backward pass, autodiff multiplies and accumulates a full `[features, 4 * units]` weight
gradient per step. `LSTM` here subclasses `keras.layers.LSTM` (same `cell`, `kernel`,
`recurrent_kernel`, `bias`, gate order i, f, c, o, so checkpoints, exports, `Bidirectional` and
`translator.introspect` are unchanged; a GPU still takes Keras's cuDNN path) and replaces only
its loop on CPU:

- the input projection of the whole sequence is one matmul before the loop, and the weights
  are cast once per call;
- the loop has a hand-written backward pass (`tf.custom_gradient`): the forward loop keeps the
  gate activations and cell states, the backward loop does only the `dz @ recurrent^T`
  matmul and a few elementwise ops per step, and the weight gradients are one matmul each over
  all steps (`inputs^T @ dz`, `h_prev^T @ dz`).

Padding follows Keras's mask semantics exactly (a masked step carries the state; the output
there is zero or the carried output), so a right-padded backward direction starts at each
sentence's last real token. `StepMatmul` gives the attention decoder's input-feeding loop the
same one-matmul weight gradient.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from translator.constants import LSTM_KINDS


def gpu_available() -> bool:
    """Whether TensorFlow sees a GPU (where Keras's LSTM uses the fused cuDNN kernel)."""
    return bool(tf.config.list_logical_devices("GPU"))


def uses_fast_loop(kind: str) -> bool:
    """Whether `kind` ("auto", "fast" or "keras") runs this module's loop on this machine."""
    if kind not in LSTM_KINDS:
        raise ValueError(f"lstm must be one of {LSTM_KINDS}, got {kind!r}")
    return kind == "fast" or (kind == "auto" and not gpu_available())


def lstm_cell(z, c):
    """Keras's LSTM cell update from pre-activations `z` `[batch, 4u]` and the cell `c`.

    Returns:
        `(h, c)`, each `[batch, u]`, with Keras's operation order (so results are bitwise the
        same as `keras.layers.LSTMCell` given the same `z`).
    """
    z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
    c = tf.sigmoid(z_f) * c + tf.sigmoid(z_i) * tf.tanh(z_c)
    return tf.sigmoid(z_o) * tf.tanh(c), c


def add_bias(x, bias):
    """`x + bias` for `x` `[..., n]` and `bias` `[n]`, with the bias gradient as one matmul.

    Autodiff of a broadcast add sums the incoming gradient over all leading axes; TensorFlow's
    CPU column sum of a `[4096, 8000]` float32 gradient (the vocabulary bias of a 4,096-token
    batch) ran about 7 times slower than the same sum as a row of ones times the gradient, a
    matrix-vector product (RESULTS.md). The values are the same sum, up to float rounding.
    """

    @tf.custom_gradient
    def add(x, bias):
        def grad(d):
            rows = tf.reshape(d, [-1, tf.shape(d)[-1]])  # [rows, n]
            ones = tf.ones([1, tf.shape(rows)[0]], d.dtype)
            return d, tf.reshape(tf.matmul(ones, rows), [-1])

        return x + bias, grad

    return add(x, tf.cast(bias, x.dtype))


def project(x, kernel, bias=None):
    """`x @ kernel (+ bias)` for `x` `[..., features]` as one 2-D matmul (an einsum or batched
    matmul over the leading axes ran several times slower on CPU)."""
    shape = tf.concat([tf.shape(x)[:-1], tf.shape(kernel)[-1:]], 0)
    y = tf.matmul(tf.reshape(x, [-1, kernel.shape[0]]), kernel)
    y = tf.reshape(y, shape)
    return y if bias is None else add_bias(y, bias)


def time_array(values, steps, name: str) -> tf.TensorArray:
    """A TensorArray holding `values` `[time, ...]`, one element per step.

    It copies `values`, but reads in a loop that autodiff differentiates stay cheap. The loops
    with a hand-written gradient below index `values[t]` instead: a slice along the first axis
    shares the tensor's buffer (in a profile of the reference model's step the copies took about
    6% of it, RESULTS.md), while autodiff of a slice in a loop would build a full-size gradient
    at every step."""
    ta = tf.TensorArray(values.dtype, size=steps, element_shape=values.shape[1:], name=name)
    return ta.unstack(values)


def recurrence(xz, h0, c0, recurrent, keep=None, training=True):
    """Runs the LSTM recurrence over precomputed input projections, with a fused gradient.

    The matmuls run in the dtype of `recurrent` (bfloat16 under `mixed_bfloat16`), the states
    and all elementwise work in float32: TensorFlow's CPU kernels for sigmoid, tanh and
    products were about 3 times slower per element in bfloat16, and the cell state keeps its
    precision (as in cuDNN).

    Args:
        xz: `[time, batch, 4u]` input projections `x_t @ kernel + bias`, time-major.
        h0: `[batch, u]` initial hidden state.
        c0: `[batch, u]` initial cell state.
        recurrent: `[u, 4u]` recurrent kernel.
        keep: `[time, batch, 1]` bool or None; False marks a masked step, which carries both
            states through unchanged (Keras's mask semantics).
        training: False keeps only the hidden states at each step, not what the fused gradient
            needs (gates and cell states: seven arrays written per step instead of one); the
            outputs are the same, and a gradient taken anyway is TensorFlow's own autodiff of
            the loop.

    Returns:
        `(hs, c)` in the dtype of `xz`: `hs` `[time, batch, u]` the hidden state after every
        step (carried at masked steps) and `c` `[batch, u]` the final cell state; `hs[-1]` is
        the final hidden state.
    """
    steps = xz.shape[0] if xz.shape[0] is not None else tf.shape(xz)[0]
    units = h0.shape[-1]
    state_dtype = tf.float64 if xz.dtype == tf.float64 else tf.float32
    matmul_dtype = recurrent.dtype
    if not training:
        xz_s, h0_s, c0_s = (tf.cast(v, state_dtype) for v in (xz, h0, c0))
        _, _, hs, c_last = _forward(xz_s, h0_s, c0_s, recurrent, keep, steps, gates=False)
        return tf.cast(hs, xz.dtype), tf.cast(c_last, xz.dtype)

    @tf.custom_gradient
    def run(xz, h0, c0, recurrent):
        xz_s, h0_s, c0_s = (tf.cast(v, state_dtype) for v in (xz, h0, c0))
        gates, cs, hs, c_last = _forward(xz_s, h0_s, c0_s, recurrent, keep, steps)

        def grad(d_hs, d_c_last):
            d_hs = tf.zeros_like(hs) if d_hs is None else tf.cast(d_hs, state_dtype)
            d_c = tf.zeros_like(c0_s) if d_c_last is None else tf.cast(d_c_last, state_dtype)
            dzs, dh0, dc0 = _backward(gates, cs, c0_s, d_hs, d_c, recurrent, keep, steps)
            h_prev = tf.cast(tf.concat([h0_s[None], hs[:-1]], 0), matmul_dtype)  # [time, b, u]
            d_recurrent = tf.matmul(  # [u, 4u]: all steps in one matmul
                tf.reshape(h_prev, [-1, units]), tf.reshape(dzs, [-1, 4 * units]), transpose_a=True
            )
            return (
                tf.cast(dzs, xz.dtype),
                tf.cast(dh0, h0.dtype),
                tf.cast(dc0, c0.dtype),
                d_recurrent,
            )

        return (tf.cast(hs, xz.dtype), tf.cast(c_last, xz.dtype)), grad

    return run(xz, h0, c0, recurrent)


def _forward(xz, h0, c0, recurrent, keep, steps, gates=True, cells=False):
    """The forward loop. Keeps, per step, what the backward pass needs (storing costs less
    than recomputing sigmoid and tanh there), or with `gates=False` only the hidden states
    (and, with `cells`, the cell states).

    Returns:
        `(gates, cs, hs, c_last)`: gates `(i, f, g, o, tanh(c))`, cell states `cs` and hidden
        states `hs`, each `[time, batch, u]`, and the final cell state `[batch, u]`; without
        `gates`, gates are `()` and `cs` is None unless `cells`.
    """
    names = ("i", "f", "g", "o", "tanh_c", "c", "h") if gates else ("c", "h") if cells else ("h",)
    arrays = tuple(
        tf.TensorArray(xz.dtype, size=steps, element_shape=c0.shape, name=name) for name in names
    )

    def body(t, h, c, arrays):
        z = xz[t] + tf.cast(tf.matmul(tf.cast(h, recurrent.dtype), recurrent), h.dtype)
        z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)  # [batch, u] each
        i, f, g, o = tf.sigmoid(z_i), tf.sigmoid(z_f), tf.tanh(z_c), tf.sigmoid(z_o)
        c_new = f * c + i * g  # Keras's order of operations
        tanh_c = tf.tanh(c_new)
        h_new = o * tanh_c
        if keep is not None:
            keep_t = keep[t]  # [batch, 1]
            h_new, c_new = tf.where(keep_t, h_new, h), tf.where(keep_t, c_new, c)
        step_values = {"i": i, "f": f, "g": g, "o": o, "tanh_c": tanh_c, "c": c_new, "h": h_new}
        values = tuple(step_values[name] for name in names)
        return (
            t + 1,
            h_new,
            c_new,
            tuple(a.write(t, v) for a, v in zip(arrays, values, strict=True)),
        )

    _, _, c_last, arrays = tf.while_loop(
        lambda t, *_: t < steps, body, (tf.constant(0), h0, c0, arrays)
    )
    *kept, hs = (a.stack() for a in arrays)
    if not gates:
        return (), (kept[0] if cells else None), hs, c_last
    *gate_values, cs = kept
    return gate_values, cs, hs, c_last


def _backward(gates, cs, c0, d_hs, d_c, recurrent, keep, steps):
    """The backward loop. Everything that does not depend on the incoming gradient is computed
    for all steps at once before it, so a step is one matmul and a handful of elementwise ops.

    Returns:
        `(dzs [time, batch, 4u] in the dtype of recurrent, dh0 [batch, u], dc0 [batch, u])`.
    """
    i, f, g, o, tanh_c = gates  # [time, batch, u] each
    c_prev = tf.concat([c0[None], cs[:-1]], 0)
    # dz = [dc*g*i', dc*c_prev*f', dc*i*g', dh*tanh(c)*o'] and dc += dh * o * tanh'(c):
    factors = tf.concat(
        [g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)], -1
    )  # [time, batch, 4u]
    dc_from_h = o * (1 - tanh_c * tanh_c)  # [time, batch, u]
    if keep is not None:  # a masked step passes dh and dc through and gets no gradient itself
        keep_f = tf.cast(keep, cs.dtype)  # [time, batch, 1]
        factors, dc_from_h = factors * keep_f, dc_from_h * keep_f
        skip_f = 1 - keep_f
    recurrent_t = tf.transpose(recurrent)  # [4u, u]
    dz_ta = tf.TensorArray(recurrent.dtype, size=steps, element_shape=factors.shape[1:])

    def body(k, dh, dc, dz_ta):
        t = steps - 1 - k
        dh = dh + d_hs[t]  # [batch, u]: from this step's output and from step t+1
        if keep is None:
            dc_new = dc + dh * dc_from_h[t]
        else:
            dc_new = dc * keep_f[t] + dh * dc_from_h[t]
        dz = tf.concat([dc_new, dc_new, dc_new, dh], -1) * factors[t]  # [batch, 4u]
        dz = tf.cast(dz, recurrent.dtype)  # kept in the matmul dtype
        dh_prev = tf.cast(tf.matmul(dz, recurrent_t), dh.dtype)
        dc_prev = dc_new * f[t]
        if keep is not None:
            skip = skip_f[t]
            dh_prev, dc_prev = dh_prev + dh * skip, dc_prev + dc * skip
        return k + 1, dh_prev, dc_prev, dz_ta.write(t, dz)

    _, dh0, dc0, dz_ta = tf.while_loop(
        lambda k, *_: k < steps, body, (tf.constant(0), tf.zeros_like(c0), d_c, dz_ta)
    )
    return dz_ta.stack(), dh0, dc0


@keras.saving.register_keras_serializable(package="translator")
class LSTM(keras.layers.LSTM):
    """`keras.layers.LSTM` with the same weights and a faster loop over time on CPU.

    The class keeps Keras's name (`lstm`, `lstm_1`, ... by default) and object graph, so a
    checkpoint written with either layer loads into the other. With `kind` "fast", or "auto"
    on a machine without a GPU, `inner_loop` is `recurrence` above; otherwise (and whenever the
    layer uses a feature the fast loop lacks: recurrent dropout, input dropout in training,
    other activations, `stateful`, `unroll`) it is Keras's own (cuDNN on a GPU).

    `step(inputs, (h, c))` advances one time step for decoding.

    Args:
        units: hidden units.
        kind: "auto", "fast" or "keras" (see above).
        **kwargs: any `keras.layers.LSTM` argument.
    """

    def __init__(self, units: int, kind: str = "auto", **kwargs):
        if kind not in LSTM_KINDS:
            raise ValueError(f"kind must be one of {LSTM_KINDS}, got {kind!r}")
        super().__init__(units, **kwargs)
        self.kind = kind

    def _fast(self, training) -> bool:
        cell = self.cell
        return (
            uses_fast_loop(self.kind)
            and not (self.stateful or self.unroll or cell.recurrent_dropout)
            and not (training and cell.dropout)
            and cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid
        )

    def cast_weights(self) -> tuple:
        """`(kernel [features, 4u], recurrent_kernel [u, 4u], bias [4u] or None)`, cast once to
        the compute dtype (float32 variables become bfloat16 under `mixed_bfloat16`)."""
        cell = self.cell
        weights = (cell.kernel, cell.recurrent_kernel, cell.bias)
        return tuple(None if w is None else ops.cast(w, self.compute_dtype) for w in weights)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if not self._fast(training):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        x = tf.transpose(sequences, (1, 0, 2))  # [time, batch, features]
        if training or mask is None:
            return self._masked_loop(x, initial_state, mask, training)
        mask = tf.cast(mask, "bool")
        lengths = tf.reduce_sum(tf.cast(mask, "int32"), 1)  # [batch]
        right_padded = tf.reduce_all(tf.equal(mask, tf.sequence_mask(lengths, tf.shape(mask)[1])))
        return tf.cond(
            right_padded,
            lambda: self._right_padded_loop(x, initial_state, lengths),
            lambda: self._masked_loop(x, initial_state, mask, training=False),
        )

    def _projected(self, x, training) -> tuple:
        """`(xz, recurrent)`: the input projections `[time, batch, 4u]` of all steps in one
        matmul and the recurrent kernel, cast once. Without training, `xz` is float32."""
        kernel, recurrent, bias = self.cast_weights()
        if training:
            return project(x, kernel, bias), recurrent
        # the loop's float32 (the cast it makes anyway), then the bias: a bfloat16 add of the
        # whole [time, batch, 4u] took longer than the cast and the add together
        xz = project(x, kernel)
        if xz.dtype != tf.float64:
            xz = tf.cast(xz, "float32")
        return (xz if bias is None else xz + tf.cast(bias, xz.dtype)), recurrent

    def _masked_loop(self, x, initial_state, mask, training):
        """Keras's semantics for any mask: a masked step carries both states unchanged."""
        keep = None if mask is None else tf.transpose(tf.cast(mask, "bool"))[:, :, None]
        if self.go_backwards:  # Keras reverses the whole padded sequence, mask included
            x = tf.reverse(x, [0])
            keep = None if keep is None else tf.reverse(keep, [0])
        xz, recurrent = self._projected(x, training)
        h0, c0 = initial_state
        hs, c = recurrence(xz, h0, c0, recurrent, keep, training)  # hs: [time, batch, units]
        outputs = hs
        if keep is not None:
            # A masked step outputs zero (`zero_output_for_mask`) or the previous output, which
            # is the carried state once a real step has been seen and zero before that.
            shown = keep if self.zero_output_for_mask else tf.cumsum(tf.cast(keep, "int32"), 0) > 0
            outputs = tf.where(shown, hs, tf.zeros((), hs.dtype))
        return outputs[-1], tf.transpose(outputs, (1, 0, 2)), [hs[-1], c]

    def _right_padded_loop(self, x, initial_state, lengths):
        """`_masked_loop`'s results without training when every row is `lengths` real steps
        then padding, with no masking inside the loop (two selects per step fewer).

        The loop runs every row through all steps; what it computes after a row's last real
        step is never read: the final states are gathered at that step, and the outputs there
        are replaced as Keras's carried states would give them. `go_backwards` reverses each
        row's real steps in place, so the loop meets them in the order Keras's reversed padded
        sequence does after its leading padding, from the initial state.
        """
        if self.go_backwards:
            x = tf.reverse_sequence(x, lengths, seq_axis=0, batch_axis=1)
        xz, recurrent = self._projected(x, training=False)
        h0, c0 = (tf.cast(v, xz.dtype) for v in initial_state)
        steps = tf.shape(xz)[0]
        _, cs, hs, _ = _forward(xz, h0, c0, recurrent, None, steps, gates=False, cells=True)
        started = (lengths > 0)[:, None]  # [batch, 1]: a row with no real step keeps h0, c0
        at_last = tf.stack([tf.maximum(lengths - 1, 0), tf.range(tf.shape(lengths)[0])], 1)
        h = tf.where(started, tf.gather_nd(hs, at_last), h0)
        c = tf.where(started, tf.gather_nd(cs, at_last), c0)
        real = tf.transpose(tf.sequence_mask(lengths, steps))[:, :, None]  # [time, batch, 1]
        if self.zero_output_for_mask or self.go_backwards:
            padding = tf.zeros((), hs.dtype)  # backwards: padding comes before any real step
        else:
            padding = tf.where(started, h, tf.zeros((), hs.dtype))[None]  # the carried output
        outputs = tf.where(real, hs, padding)
        if self.go_backwards:  # Keras's order: leading padding, then the real steps reversed
            outputs = tf.reverse(tf.reverse_sequence(outputs, lengths, 0, 1), [0])
        return outputs[-1], tf.transpose(outputs, (1, 0, 2)), [h, c]

    def step(self, inputs, states, weights: tuple | None = None):
        """One step: `inputs` `[batch, features]`, `states` `(h, c)` `[batch, units]`.

        Args:
            inputs: this step's input, in the compute dtype.
            states: `(h, c)`.
            weights: `cast_weights()` computed once outside a loop, or None to cast here.

        Returns:
            `(h, [h, c])` like `keras.layers.LSTMCell`, with the same operation order.
        """
        kernel, recurrent, bias = self.cast_weights() if weights is None else weights
        h, c = states
        z = tf.matmul(inputs, kernel) + tf.matmul(h, recurrent)  # [batch, 4u]
        if bias is not None:
            z = z + bias
        h, c = lstm_cell(z, c)
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


class StepMatmul:
    """`a_t @ weight + offsets[t]` at every step t of a `tf.while_loop`, with the weight's
    gradient computed after the loop as one matmul over all steps.

    Autodiff through a while loop multiplies and accumulates a full `[k, n]` weight gradient at
    every step. Here the loop multiplies by `weight` under `stop_gradient` and adds
    `offsets[t]`; the gradient reaching `offsets` is every step's `dz` `[time, batch, n]`, and
    its custom gradient returns `inputs^T @ dz` for the weight, `inputs` being the `a_t` the
    loop recorded (`set_inputs`, after the loop). Gradients for `a_t` still flow per step
    (`multiply`, the loop's product).

    Args:
        weight: `[k, n]`, e.g. `concat([kernel_fed_rows, recurrent_kernel])`, already cast.
        offsets: `[time, batch, n]`, e.g. the precomputed embedding half of the input
            projection plus the bias; its own gradient passes through unchanged.
    """

    def __init__(self, weight, offsets):
        self.weight = tf.stop_gradient(weight)  # [k, n]
        # a_t's gradient dz @ weight^T at every step, from a transpose stored once: with the
        # transposed operand in each step's matmul it ran 2.3x slower on an AVX2 CPU (RESULTS.md)
        self._weight_t = tf.transpose(self.weight)  # [n, k]
        self._inputs = None
        self.offsets = self._tap(weight, offsets)  # [time, batch, n]

    def multiply(self, a):
        """`a @ weight` at one step, `a` `[batch, k]`; its gradient uses the stored transpose."""
        weight, weight_t = self.weight, self._weight_t

        @tf.custom_gradient
        def step(a):
            def grad(dz):
                return tf.matmul(tf.cast(dz, weight_t.dtype), weight_t)  # [batch, k]

            return tf.matmul(a, weight), grad

        return step(a)

    def _tap(self, weight, offsets):
        @tf.custom_gradient
        def tap(weight, offsets):
            def grad(d_offsets):
                if self._inputs is None:
                    raise RuntimeError("StepMatmul.set_inputs was not called after the loop")
                k, n = weight.shape
                d_weight = tf.matmul(
                    tf.reshape(self._inputs, [-1, k]),
                    tf.reshape(tf.cast(d_offsets, weight.dtype), [-1, n]),
                    transpose_a=True,
                )
                return d_weight, d_offsets

            return tf.identity(offsets), grad

        return tap(weight, offsets)

    def set_inputs(self, inputs) -> None:
        """Records the stacked per-step inputs `a_t` `[time, batch, k]` once the loop is done."""
        self._inputs = tf.cast(inputs, self.weight.dtype)
