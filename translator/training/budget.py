"""Training under a time budget: the clock, the plan of updates that fit, and the learning rate
that anneals to its floor exactly at the planned last update.

The clock counts wall-clock seconds from the start of the training process plus the seconds
earlier, interrupted runs of the same model directory spent up to their last checkpoint (kept in
the checkpoint). The plan is re-made as the trainer measures itself: seconds per update (steady
state, tracing excluded), the validation and checkpoint cost of each epoch, and a reserve for
what follows the last update (final validation, checkpoint, history). The schedule reads the
planned total from a variable, so a re-plan bends the decay without retracing the step.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from translator.errors import ConfigError

# The share of the budget kept free of planned work, for the noise in measured speeds.
SAFETY = 0.02
# The learning rate at the planned last update, as a fraction of the peak rate.
FLOOR = 0.01
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h)?\s*$")
_UNIT_MINUTES = {"s": 1 / 60, "sec": 1 / 60, "m": 1.0, "min": 1.0, "h": 60.0, None: 1.0}


def parse_minutes(text: str | float | int) -> float:
    """Minutes from "30", "30m", "1.5h" or "90s" (a bare number is minutes).

    Raises:
        ConfigError: the text is not a positive duration.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        minutes = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ConfigError(
                f"time budget {text!r} is not a duration; use minutes like 30, 30m, 1.5h or 90s"
            )
        minutes = float(match.group(1)) * _UNIT_MINUTES[match.group(2)]
    if not minutes > 0 or not math.isfinite(minutes):
        raise ConfigError(f"time budget must be positive, got {text!r}")
    return minutes


class BudgetSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `base`, then cosine decay to `floor * base` at update `total_steps`.

    `total_steps` is a variable the planner re-assigns; past it the rate stays at the floor.
    """

    def __init__(self, base: float, warmup_steps: int, floor: float = FLOOR):
        self.base = base
        self.warmup_steps = warmup_steps
        self.floor = floor
        self.total_steps = tf.Variable(
            1, trainable=False, dtype=tf.int64, name="budget_total_steps"
        )
        self.scale = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="lr_scale")

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warmup = float(max(self.warmup_steps, 1))
        total = tf.maximum(tf.cast(self.total_steps, tf.float32), warmup + 1.0)
        progress = tf.clip_by_value((step - warmup) / (total - warmup), 0.0, 1.0)
        decay = self.floor + (1.0 - self.floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return self.base * tf.minimum(1.0, step / warmup) * decay * self.scale

    def get_config(self) -> dict:
        return {"base": self.base, "warmup_steps": self.warmup_steps, "floor": self.floor}


@dataclass
class BudgetPlanner:
    """Plans how many updates fit in what is left of a budget.

    Args:
        budget_seconds: the whole budget.
        spent_before: seconds earlier runs of this model directory used (0 for a new run).
        started: `time.monotonic()` when this process started.
    """

    budget_seconds: float
    spent_before: float = 0.0
    started: float = field(default_factory=time.monotonic)
    step_seconds: list[float] = field(default_factory=list)  # per-update, one per window
    epoch_overheads: list[float] = field(default_factory=list)  # validation + checkpoint
    final_seconds: float = 0.0  # measured cost of the end of training, when known

    def elapsed(self) -> float:
        """Budget seconds used so far, earlier runs included."""
        return self.spent_before + time.monotonic() - self.started

    def remaining(self) -> float:
        return self.budget_seconds - self.elapsed()

    def record_steps(self, steps: int, seconds: float) -> None:
        """A window of `steps` updates took `seconds` (leave out windows that traced)."""
        if steps > 0 and seconds > 0:
            self.step_seconds.append(seconds / steps)

    def record_epoch_overhead(self, seconds: float) -> None:
        """The end of an epoch (validation, checkpoint, history) took `seconds`."""
        self.epoch_overheads.append(seconds)

    def seconds_per_step(self) -> float | None:
        """Median of the last windows' seconds per update (robust to one slow window)."""
        if not self.step_seconds:
            return None
        return statistics.median(self.step_seconds[-8:])

    def reserve(self) -> float:
        """Seconds kept for after the last update: the last end-of-epoch cost (a final
        validation and checkpoint), plus the safety share of the budget."""
        end = max(self.final_seconds, self.epoch_overheads[-1] if self.epoch_overheads else 0.0)
        return end + SAFETY * self.budget_seconds

    def plan(self, step: int, steps_per_epoch: int | None) -> int | None:
        """The planned total number of updates, or None before any speed is measured.

        The epochs ahead each cost their validation: the updates left share what remains after
        the reserve with the epoch ends they cross.
        """
        per_step = self.seconds_per_step()
        if per_step is None:
            return None
        free = self.remaining() - self.reserve()
        overhead = self.epoch_overheads[-1] if self.epoch_overheads else 0.0
        per_update = per_step + (overhead / steps_per_epoch if steps_per_epoch else 0.0)
        return step + max(0, int(free / per_update))

    def one_epoch_fits(self, steps_per_epoch: int) -> tuple[bool, float]:
        """Whether one epoch of updates fits in what is left (with the reserve); and the
        seconds one epoch takes at the measured speed."""
        per_step = self.seconds_per_step() or 0.0
        epoch = per_step * steps_per_epoch
        return epoch <= self.remaining() - SAFETY * self.budget_seconds, epoch
