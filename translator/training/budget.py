"""Training under a time budget: the clock, the plan of updates that fit, the stop rule.

The clock counts wall-clock seconds from the start of the training process, plus the budget
seconds earlier, interrupted runs of the same model directory had used when they wrote their
last checkpoint (`BudgetSchedule.spent_seconds`, kept in the checkpoint: work done after that
checkpoint is lost and is counted again when redone). Before the first update the trainer
measures its speed on a few updates at learning rate 0 (`TimeBudget.calibrate`) and refuses a
budget that cannot hold one epoch. It then re-plans every `WINDOW` updates from what it measures:
seconds per update (median of recent windows), the validation and checkpoint cost of each epoch,
and a reserve for what follows the last update (the final validation and checkpoint, plus
`SAFETY` of the budget). The plan is the planned last update, written into the schedule's
variable, so the learning rate anneals to its floor exactly where the time runs out.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from translator.config import TrainConfig
from translator.errors import ConfigError
from translator.training.schedules import BudgetSchedule

log = logging.getLogger(__name__)

# The share of the budget kept free of planned work, for the noise in measured speeds, and
# its floor in seconds (the end of a run costs some seconds whatever the budget).
SAFETY = 0.02
MIN_SAFETY_SECONDS = 5.0
# Updates per speed measurement and re-plan (a multiple-worker run agrees on the plan there).
WINDOW = 20
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


def dropout_for_epochs(table: tuple[tuple[float, float], ...], epochs: float) -> float:
    """The dropout `train.dropout_by_epochs` gives a run planned for `epochs` epochs: linear
    between its (epochs, dropout) points, flat beyond the first and the last."""
    if epochs <= table[0][0]:
        return table[0][1]
    for (e0, d0), (e1, d1) in itertools.pairwise(table):
        if epochs <= e1:
            return d0 + (d1 - d0) * (epochs - e0) / (e1 - e0)
    return table[-1][1]


@dataclass
class BudgetPlanner:
    """Plans how many updates fit in what is left of a budget (plain arithmetic, no TF).

    Args:
        budget_seconds: the whole budget.
        spent_before: seconds earlier runs of this model directory used (0 for a new run).
        started: `time.monotonic()` when this process started.
    """

    budget_seconds: float
    spent_before: float = 0.0
    started: float = field(default_factory=time.monotonic)
    step_seconds: list[float] = field(default_factory=list)  # per update, one per window
    epoch_overheads: list[float] = field(default_factory=list)  # validation + checkpoint

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
        """Seconds kept for after the last update: one end-of-epoch cost (the final validation
        and checkpoint), plus the safety share of the budget."""
        end = self.epoch_overheads[-1] if self.epoch_overheads else 0.0
        return end + max(SAFETY * self.budget_seconds, MIN_SAFETY_SECONDS)

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
        return epoch <= self.remaining() - self.reserve(), epoch


class TimeBudget:
    """The budget of one run: steers `schedule.total_steps` and says when to stop.

    Args:
        config: the `train` section (`time_budget` minutes; `max_steps` and `epochs`, when
            set, still cap the plan).
        schedule: the run's schedule (restored: a resumed run continues its plan and clock).
        steps_per_epoch: global batches in one epoch.
        started: `time.monotonic()` at the start of the process.
        agree: maps the planned total to the chief's value on every worker (identity for one).
        single_worker: whether this is the only worker (then a fall in speed between two
            re-plans also ends the run when the time left is down to the reserve).
    """

    def __init__(
        self,
        config: TrainConfig,
        schedule: BudgetSchedule,
        steps_per_epoch: int,
        started: float,
        agree: Callable[[int], int] = lambda total: total,
        single_worker: bool = True,
    ):
        self.schedule, self.steps_per_epoch, self.agree = schedule, steps_per_epoch, agree
        self.single_worker = single_worker
        self.minutes = config.time_budget
        spent = float(schedule.spent_seconds.numpy())
        self.planner = BudgetPlanner(config.time_budget * 60.0, spent, started)
        caps = [config.max_steps, config.epochs * steps_per_epoch]
        self.cap = min([c for c in caps if c] or [2**40])
        self.window_steps = 0
        self.window_seconds = 0.0
        self.skip_window = True  # this process's first window traces the step
        self.logged_plan = False

    @property
    def total_steps(self) -> int:
        return int(self.schedule.total_steps.numpy())

    def calibrate(self, step_seconds: list[float], validation_seconds: float) -> None:
        """Takes the speed measured before training (updates at learning rate 0; the first
        ones trace) and the estimated cost of one validation, and refuses a budget that cannot
        hold one epoch.

        Raises:
            ConfigError: one epoch does not fit in what is left of the budget.
        """
        steady = step_seconds[2:] or step_seconds
        self.planner.record_steps(len(steady), sum(steady))
        self.planner.record_epoch_overhead(validation_seconds)
        self.skip_window = False  # the calibration traced the step already
        fits, epoch = self.planner.one_epoch_fits(self.steps_per_epoch)
        if not fits:
            left = self.planner.remaining() / 60.0
            raise ConfigError(
                f"train.time_budget={self.minutes:g} min is too small: one epoch "
                f"({self.steps_per_epoch} updates) takes about {epoch / 60.0:.1f} min here and "
                f"{max(left, 0.0):.1f} min of the budget are left after start-up; raise the "
                "budget or use a smaller model or corpus"
            )

    def after_step(self, step: int, seconds: float) -> None:
        """Counts an update; every WINDOW updates, measures the speed and re-plans."""
        self.window_steps += 1
        self.window_seconds += seconds
        if step % WINDOW:
            return
        if not self.skip_window:
            self.planner.record_steps(self.window_steps, self.window_seconds)
        self.skip_window = False
        self.window_steps, self.window_seconds = 0, 0.0
        self.replan(step)

    def after_epoch(self, seconds: float) -> None:
        """The end of an epoch (validation and checkpoint) took `seconds`."""
        self.planner.record_epoch_overhead(seconds)

    def replan(self, step: int) -> None:
        """Re-plans the last update from the measured speed and what is left of the budget."""
        planned = self.planner.plan(step, self.steps_per_epoch)
        if planned is None:
            return
        total = self.agree(min(planned, self.cap))
        previous = self.total_steps
        self.schedule.total_steps.assign(total)
        if not self.logged_plan or abs(total - previous) > 0.1 * max(previous, 1):
            self.logged_plan = True
            log.info(
                "time budget %g min: %d updates planned (%.1f epochs of %d) at %.3f s per "
                "update, %.1f min left",
                self.minutes,
                total,
                total / self.steps_per_epoch,
                self.steps_per_epoch,
                self.planner.seconds_per_step(),
                self.planner.remaining() / 60.0,
            )

    def done(self, step: int) -> bool:
        """Whether the planned last update is reached."""
        return step >= self.total_steps

    def before_save(self) -> None:
        """Writes the clock into the schedule's checkpointed variable."""
        self.schedule.spent_seconds.assign(self.planner.elapsed())

    def summary(self) -> dict:
        """What the budget planned and used, for the log and the run's summary."""
        return {
            "time_budget_minutes": self.minutes,
            "budget_used_minutes": round(self.planner.elapsed() / 60.0, 2),
            "planned_steps": self.total_steps,
        }
