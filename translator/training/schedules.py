"""Learning-rate schedules the trainer drives, and the plateau rule.

A schedule is a Keras `LearningRateSchedule` (the optimizer calls it with its step) with two
hooks the trainer calls: `checkpoint_variables` (state a resumed run must continue from, saved
in the training checkpoint under these names) and `after_validation` (once per validated epoch).
`make_schedule` picks the schedule for a `train` section; another schedule plugs in there.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from translator.config import TrainConfig

# A budget schedule's rate at the planned last update, as a fraction of the peak rate.
BUDGET_FLOOR = 0.01


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """What the trainer needs of a learning-rate schedule besides `__call__(step)`."""

    def checkpoint_variables(self) -> dict[str, tf.Variable]:
        """Variables the training checkpoint holds, by name (names must never change)."""
        return {}

    def after_validation(self, improved: bool) -> None:
        """Called after each epoch's validation: whether the validation BLEU improved."""


class LearningRate(Schedule):
    """Linear warm-up, then constant or inverse-square-root decay, times a plateau `scale`.

    With `decay="plateau"` the rate is constant until an epoch's validation BLEU does not
    improve; each such epoch halves `scale`.
    """

    def __init__(self, base: float, warmup_steps: int = 0, decay: str = "constant"):
        self.base = base
        self.warmup_steps = warmup_steps
        self.decay = decay
        self.scale = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="lr_scale")

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warmup = float(max(self.warmup_steps, 1))
        rate = self.base * tf.minimum(1.0, step / warmup)
        if self.decay == "inverse_sqrt":
            rate *= tf.math.rsqrt(tf.maximum(step, warmup) / warmup)
        return rate * self.scale

    def get_config(self) -> dict:
        return {"base": self.base, "warmup_steps": self.warmup_steps, "decay": self.decay}

    def checkpoint_variables(self) -> dict[str, tf.Variable]:
        return {"lr_scale": self.scale}

    def after_validation(self, improved: bool) -> None:
        if self.decay == "plateau" and not improved:
            self.scale.assign(self.scale * 0.5)


class BudgetSchedule(Schedule):
    """Linear warm-up to `base`, then cosine decay to `floor * base` at update `total_steps`;
    with `decay` < 1 the rate stays at `base` until the last `decay` share of the updates
    after warm-up, and decays over those.

    The plan of a time-budgeted run (see budget.py) lives here, in the training checkpoint:
    `total_steps`, the planned last update, which the planner re-assigns as it measures the
    run's speed (past it the rate stays at the floor), and `spent_seconds`, the budget seconds
    used up to the checkpoint, so a resumed run continues the same budget.
    """

    def __init__(
        self, base: float, warmup_steps: int, floor: float = BUDGET_FLOOR, decay: float = 1.0
    ):
        self.base = base
        self.warmup_steps = warmup_steps
        self.floor = floor
        self.decay = decay
        self.scale = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="lr_scale")
        self.total_steps = tf.Variable(
            2**40, trainable=False, dtype=tf.int64, name="budget_total_steps"
        )
        self.spent_seconds = tf.Variable(
            0.0, trainable=False, dtype=tf.float64, name="budget_spent_seconds"
        )

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warmup = float(max(self.warmup_steps, 1))
        total = tf.maximum(tf.cast(self.total_steps, tf.float32), warmup + 1.0)
        start = total - self.decay * (total - warmup)  # the decay's first update
        progress = tf.clip_by_value((step - start) / (total - start), 0.0, 1.0)
        decay = self.floor + (1.0 - self.floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return self.base * tf.minimum(1.0, step / warmup) * decay * self.scale

    def get_config(self) -> dict:
        return {
            "base": self.base,
            "warmup_steps": self.warmup_steps,
            "floor": self.floor,
            "decay": self.decay,
        }

    def checkpoint_variables(self) -> dict[str, tf.Variable]:
        return {
            "lr_scale": self.scale,
            "budget_total_steps": self.total_steps,
            "budget_spent_seconds": self.spent_seconds,
        }


def make_schedule(config: TrainConfig) -> Schedule:
    """The schedule `train.learning_rate`, `train.warmup_steps` and `train.lr_schedule` name,
    or the budget's schedule with `train.time_budget`.

    Call it under the strategy's scope (its variables are then mirrored like the model's).
    """
    if config.time_budget:
        return BudgetSchedule(config.learning_rate, config.warmup_steps, decay=config.budget_decay)
    return LearningRate(config.learning_rate, config.warmup_steps, config.lr_schedule)
