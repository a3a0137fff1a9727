"""The compiled step functions: a replica's train and eval step, run on every replica.

The optimizer gets no `clipnorm`: Keras would clip each replica's gradient, while the global
gradient (the sum over replicas) is what must be clipped.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from translator.config import TrainConfig
from translator.distribute import fill_empty
from translator.model import Seq2Seq
from translator.training.losses import replica_loss


class StepFunctions:
    """A model's train and eval steps under a strategy, as tf.functions.

    `train_step(batch, stop)` applies one optimizer update and returns (global mean loss,
    global target tokens, stop flag); the flag is > 0 when any worker passed `stop` = 1.0.
    `eval_step(batch)` returns the first two. Batches are global batches (tensors, or the
    distributed values of distribute_batches).
    """

    def __init__(
        self,
        model: Seq2Seq,
        optimizer: keras.optimizers.Optimizer,
        strategy: tf.distribute.Strategy,
        config: TrainConfig,
    ):
        self.model, self.optimizer, self.strategy, self.config = model, optimizer, strategy, config
        # No AutoGraph: the steps and the model hold no Python control flow on tensors (their
        # loops are explicit tf.while_loops), and converting their source took more than half
        # of a short training process's CPU time.
        step = {"reduce_retracing": True, "autograph": False}
        jit = config.jit_compile
        replica_train = tf.function(self._replica_train, jit_compile=jit, **step)
        replica_eval = tf.function(self._replica_eval, jit_compile=jit, **step)
        self.train_step = tf.function(
            lambda batch, stop: self._run(replica_train, batch, stop), **step
        )
        self.eval_step = tf.function(lambda batch: self._run(replica_eval, batch)[:2], **step)

    def _replica_train(self, batch, stop):
        with tf.GradientTape() as tape:
            loss, tokens, stop = replica_loss(self.model, batch, self.config, True, stop)
        variables = self.model.trainable_variables
        grads, used = [], []
        for grad, variable in zip(tape.gradient(loss, variables), variables, strict=True):
            if grad is not None:
                # Dense: Keras's Adam squares IndexedSlices values before summing repeated
                # rows (an embedding row used twice), which is not the gradient's square.
                grads.append(tf.convert_to_tensor(grad))
                used.append(variable)
        clip = self.config.clip_norm
        if clip:
            # Clip the global gradient (the sum over replicas); Keras would clip each
            # replica's part. The optimizer sums over replicas again, hence the division.
            ctx = tf.distribute.get_replica_context()
            replicas = ctx.num_replicas_in_sync
            if replicas > 1:
                grads = ctx.all_reduce("sum", grads)
            grads, _ = tf.clip_by_global_norm(grads, clip)
            if replicas > 1:
                grads = [g / replicas for g in grads]
        self.optimizer.apply_gradients(zip(grads, used, strict=True))
        return loss, tokens, stop

    def _replica_eval(self, batch):
        return replica_loss(self.model, batch, self.config, False)

    def _run(self, replica_fn, batch, *args):
        """Runs `replica_fn` on every replica: global mean loss, global tokens, stop flag.
        A replica without rows (its worker's data ran out first) gets a filler row."""
        batch = self.strategy.run(fill_empty, args=(batch,))
        loss, tokens, stop = self.strategy.run(replica_fn, args=(batch, *args))
        return (
            self.strategy.reduce("sum", loss, axis=None),
            self.strategy.reduce("sum", tokens, axis=None),
            self.strategy.reduce("mean", stop, axis=None),  # already global: same everywhere
        )


def trace_for_any_shape(function, batch, *specs) -> None:
    """Traces the tf.function `function` once for batches of every shape.

    Left to `reduce_retracing`, a step function is traced three times (the first batch's
    shape, then again as each dimension turns out to vary): seconds each, per process.
    Batches split over replicas are left to trace as they come.
    """
    if all(isinstance(t, tf.Tensor) for t in batch):
        relaxed = tuple(tf.TensorSpec([None] * t.shape.rank, t.dtype) for t in batch)
        function.get_concrete_function(relaxed, *specs)
