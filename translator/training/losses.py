"""Losses: per-token cross-entropy, and a replica's share of the global mean loss of a batch.

Losses are averaged per target token across the whole global batch (`tf.nn.compute_average_loss`
with the global token count), so a replica's share of the gradient matches its share of the
tokens.
"""

from __future__ import annotations

import tensorflow as tf

from translator.config import TrainConfig
from translator.constants import PAD_ID
from translator.model import Seq2Seq


def sequence_loss(labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Per-token cross-entropy `labels.shape` from logits `[..., vocab]` (padding not masked).

    With label smoothing the target distribution is (1 - eps) * one_hot + eps / vocab, as in
    Keras's categorical cross-entropy, computed by `smoothed_cross_entropy`. Without it,
    TensorFlow's fused sparse softmax cross-entropy kernel computes the loss and its gradient
    together; a log-softmax, a gather and a mean cost more, mostly in the gather's gradient (a
    scatter into a zeroed `[tokens, vocab]` tensor): the profile is in RESULTS.md.
    """
    logits = tf.cast(logits, tf.float32)
    if label_smoothing <= 0.0:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    return smoothed_cross_entropy(labels, logits, label_smoothing)


def smoothed_cross_entropy(labels: tf.Tensor, logits: tf.Tensor, eps: float) -> tf.Tensor:
    """Cross-entropy against (1 - eps) * one_hot(labels) + eps / vocab, with its gradient
    written out: `softmax(logits) - targets` from the forward pass's exponentials.

    The targets sum to 1, so the loss is `logsumexp(z) - off * sum(z) - (on - off) * z_label`
    (off = eps / vocab, on = 1 - eps + off) and no `[tokens, vocab]` one-hot is built. On
    `[4096, 8000]` float32 logits, loss and gradient took 106.7 ms against 154.5 ms for
    TensorFlow's fused `softmax_cross_entropy_with_logits` on a smoothed one-hot, with the same
    values (`benchmarks/train_step_profile.py kernels`, RESULTS.md).

    Args:
        labels: integer ids, any shape `S`.
        logits: float32 `S + [vocab]`.
        eps: the label smoothing, in (0, 1).

    Returns:
        float32 losses of shape `S`.
    """
    vocab = logits.shape[-1] if logits.shape[-1] is not None else tf.shape(logits)[-1]
    off = eps / tf.cast(vocab, tf.float32)
    on_extra = 1.0 - eps  # on - off
    shape = tf.shape(labels)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])  # [tokens]

    @tf.custom_gradient
    def loss(logits):  # [tokens, vocab]
        shifted = logits - tf.reduce_max(logits, -1, keepdims=True)
        exp = tf.exp(shifted)
        total = tf.reduce_sum(exp, -1, keepdims=True)  # [tokens, 1]
        label_logit = tf.gather(shifted, labels, batch_dims=1)
        value = tf.math.log(total[:, 0]) - off * tf.reduce_sum(shifted, -1) - on_extra * label_logit

        def grad(upstream):  # [tokens]
            d = exp * (upstream[:, None] / total) - (off * upstream)[:, None]
            at_label = tf.stack([tf.range(tf.shape(labels)[0]), labels], 1)
            return tf.tensor_scatter_nd_sub(d, at_label, on_extra * upstream)

        return value, grad

    flat = loss(tf.reshape(logits, [-1, vocab]))
    return tf.reshape(flat, shape)


def token_losses(
    model: Seq2Seq, batch, label_smoothing: float = 0.0, training: bool = False, packed: bool = True
) -> tf.Tensor:
    """Cross-entropy of the real (non-pad) target tokens of a (source, target_in, target_out) batch.

    With `packed`, the decoder outputs of real tokens are gathered before the vocabulary
    projection, so no logits or softmax are computed at padding (the projection is the
    largest matmul of the model). Both ways give the same losses, up to float rounding.

    Returns:
        `[tokens]` float32 when packed, else `[batch * time]` with zeros at padding.
    """
    source, target_in, target_out = batch
    state = model.encode(source, training=training)
    features, _ = model.decoder.features(  # [batch, time, units]
        tf.cast(target_in, tf.int32), state, training=training
    )
    if packed:
        index = tf.where(tf.not_equal(target_out, PAD_ID))  # [tokens, 2]
        logits = model.decoder.project(tf.gather_nd(features, index))  # [tokens, vocab]
        return sequence_loss(tf.gather_nd(target_out, index), logits, label_smoothing)
    mask = tf.cast(tf.not_equal(target_out, PAD_ID), tf.float32)  # [batch, time]
    per_token = sequence_loss(target_out, model.decoder.project(features), label_smoothing)
    return tf.reshape(per_token * mask, [-1])


def replica_loss(
    model: Seq2Seq, batch, config: TrainConfig, training: bool, stop: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """This replica's share of the global mean loss, its token count, the global stop flag.

    Runs in a replica context. `stop` is this worker's stop flag (1.0 after a signal); the
    returned flag is the sum over all replicas, so every worker sees any worker's signal.
    """
    target_out = batch[2]
    tokens = tf.reduce_sum(tf.cast(tf.not_equal(target_out, PAD_ID), tf.float32))
    ctx = tf.distribute.get_replica_context()
    # One all-reduce for both: the global token count and whether any worker must stop.
    stop = tf.constant(0.0) if stop is None else stop
    global_tokens, stop = tf.unstack(ctx.all_reduce("sum", tf.stack([tokens, stop])))
    per_token = token_losses(
        model, batch, config.label_smoothing, training, packed=config.packed_loss
    )
    loss = tf.nn.compute_average_loss(
        per_token, global_batch_size=tf.cast(tf.maximum(global_tokens, 1.0), tf.int64)
    )
    return loss, tokens, stop
