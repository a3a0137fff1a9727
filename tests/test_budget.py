"""The time budget: durations, the planned schedule, the planner's arithmetic."""

from __future__ import annotations

import os
import signal
import time

import pytest

from translator.errors import ConfigError
from translator.training.budget import (
    MIN_SAFETY_SECONDS,
    SAFETY,
    BudgetPlanner,
    dropout_for_epochs,
    parse_minutes,
)
from translator.training.schedules import BUDGET_FLOOR as FLOOR
from translator.training.schedules import BudgetSchedule


@pytest.mark.parametrize(
    "text, minutes", [("30", 30.0), ("30m", 30.0), ("1.5h", 90.0), ("90s", 1.5), (45, 45.0)]
)
def test_durations_parse_to_minutes(text, minutes):
    assert parse_minutes(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["", "thirty", "-5m", "0", "5d", "nan"])
def test_bad_durations_are_config_errors(text):
    with pytest.raises(ConfigError, match="budget"):
        parse_minutes(text)


def test_schedule_warms_up_then_reaches_its_floor_at_the_planned_last_step():
    schedule = BudgetSchedule(base=0.002, warmup_steps=10)
    schedule.total_steps.assign(110)
    rates = [float(schedule(step)) for step in range(0, 130)]  # step t is update t + 1
    assert rates[0] == pytest.approx(0.002 / 10)
    assert rates[9] == pytest.approx(0.002)  # the 10th update: the peak
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))  # decays
    assert rates[59] == pytest.approx(0.002 * (FLOOR + (1 - FLOOR) * 0.5), rel=1e-5)  # halfway
    assert rates[109] == pytest.approx(0.002 * FLOOR)  # the planned last update
    assert rates[129] == pytest.approx(0.002 * FLOOR)  # past the plan: stays at the floor
    schedule.total_steps.assign(210)  # a re-plan bends the same schedule
    assert float(schedule(109)) > 0.002 * 0.4


def test_a_decay_share_holds_the_peak_then_reaches_the_floor_at_the_planned_last_step():
    schedule = BudgetSchedule(base=0.002, warmup_steps=10, decay=0.2)
    schedule.total_steps.assign(110)  # 100 updates after warm-up: the last 20 decay
    rates = [float(schedule(step)) for step in range(0, 120)]
    assert rates[0] == pytest.approx(0.002 / 10)
    assert all(r == pytest.approx(0.002) for r in rates[9:90])  # held up to update 90
    assert all(a > b for a, b in zip(rates[89:109], rates[90:110], strict=False))  # decays
    assert rates[99] == pytest.approx(0.002 * (FLOOR + (1 - FLOOR) * 0.5), rel=1e-5)  # halfway
    assert rates[109] == pytest.approx(0.002 * FLOOR)
    assert rates[119] == pytest.approx(0.002 * FLOOR)
    schedule.total_steps.assign(210)  # a re-plan moves the decay to the new end
    assert float(schedule(150)) == pytest.approx(0.002)
    assert float(schedule(209)) == pytest.approx(0.002 * FLOOR)


def test_a_decay_share_outside_0_to_1_is_a_config_error():
    from translator.config import load_config

    for bad in ("0", "1.5", "-0.2"):
        with pytest.raises(ConfigError, match="budget_decay"):
            load_config(None, [f"train.budget_decay={bad}", "train.time_budget=30"])


def test_planner_fills_what_is_left_after_the_reserve():
    planner = BudgetPlanner(budget_seconds=1000.0, spent_before=100.0, started=0.0)
    planner.elapsed = lambda: 400.0  # type: ignore[method-assign]
    assert planner.plan(step=50, steps_per_epoch=100) is None  # no speed measured yet
    planner.record_steps(100, 50.0)  # 0.5 s per update
    planner.record_steps(100, 500.0)  # one slow window does not move the median much
    planner.record_steps(100, 50.0)
    free = 1000.0 - 400.0 - max(SAFETY * 1000.0, MIN_SAFETY_SECONDS)
    assert planner.plan(step=50, steps_per_epoch=100) == 50 + int(free / 0.5)
    planner.record_epoch_overhead(10.0)  # validation: 10 s per 100 updates
    free -= 10.0  # the final validation is reserved too
    assert planner.plan(step=50, steps_per_epoch=100) == 50 + int(free / 0.6)
    fits, epoch = planner.one_epoch_fits(100)
    assert fits and epoch == pytest.approx(50.0)
    assert not planner.one_epoch_fits(10_000)[0]


def test_dropout_is_read_off_the_table_at_the_planned_epochs():
    table = ((12.0, 0.3), (24.0, 0.4), (48.0, 0.5))
    assert dropout_for_epochs(table, 3.0) == 0.3  # flat before the first point
    assert dropout_for_epochs(table, 12.0) == 0.3
    assert dropout_for_epochs(table, 18.0) == pytest.approx(0.35)
    assert dropout_for_epochs(table, 36.0) == pytest.approx(0.45)
    assert dropout_for_epochs(table, 100.0) == 0.5  # and after the last
    assert dropout_for_epochs(((5.0, 0.2),), 50.0) == 0.2


# -- budgeted training on the synthetic task -------------------------------------------------

BUDGET_MINUTES = 0.75
SLACK = 0.05  # README: a budgeted process ends within its budget plus at most 5%


def _budget_config(synthetic_files, out, minutes=BUDGET_MINUTES, overrides=()):
    from conftest import tiny_config

    return tiny_config(
        synthetic_files,
        out,
        ("train.max_steps=0", "train.epochs=0", f"train.time_budget={minutes}", *overrides),
    )


def test_budgeted_run_ends_within_its_budget_at_its_floor_rate_and_keeps_its_last_model(
    synthetic_files, tmp_path, monkeypatch
):
    import tensorflow as tf

    from translator import evaluate
    from translator.train import Trainer

    # Validation BLEU that falls epoch after epoch: the best checkpoint is still the last one.
    scores = []

    def falling_bleu(hypotheses, references):
        scores.append(50.0 - len(scores))
        return {"bleu": scores[-1], "chrf": 50.0}

    monkeypatch.setattr(evaluate, "score", falling_bleu)
    started = time.monotonic()
    # With a dropout table: the run's rate is chosen after the speed is measured, and the
    # step traced again, inside the budget.
    table = "train.dropout_by_epochs=[[1, 0.05], [1001, 0.3]]"
    trainer = Trainer(
        _budget_config(synthetic_files, tmp_path / "out", overrides=[table]), False, started
    )
    result = trainer.fit()
    elapsed = time.monotonic() - started
    assert elapsed <= BUDGET_MINUTES * 60 * (1 + SLACK)
    assert elapsed >= BUDGET_MINUTES * 60 * 0.8  # the budget is used, not wasted
    # The plan's last update, or just before it when the time left fell to the reserve first.
    planned = result.budget["planned_steps"]
    assert 0.95 * planned <= result.steps <= planned and result.steps > 60  # 80 on a slow CI
    assert trainer._learning_rate() <= 0.01 * 1.5 * FLOOR  # learning_rate 0.01 at its floor
    last = result.history[-1]
    assert last["budget_seconds"] <= BUDGET_MINUTES * 60 * (1 + SLACK)
    assert last["valid_loss"] < result.history[0]["valid_loss"]  # it learned
    best = tf.train.latest_checkpoint(str(tmp_path / "out" / "best"))
    assert len(scores) >= 2 and best.endswith(f"ckpt-{result.steps}")  # the annealed end
    # The rate of the first plan's epochs, which re-plans move by less than a factor of 3.
    planned = 1.0 + (result.dropout - 0.05) / 0.25 * 1000.0
    epochs = result.steps / trainer.budget.steps_per_epoch
    assert 0.05 < result.dropout < 0.3 and epochs / 3 <= planned <= 3 * epochs


def test_resumed_budgeted_run_keeps_the_plan_and_the_clock(synthetic_files, tmp_path, monkeypatch):
    from translator.train import Trainer, TrainingInterrupted
    from translator.training.budget import TimeBudget

    config = _budget_config(synthetic_files, tmp_path / "out")
    after_step = TimeBudget.after_step

    def interrupt_at_60(self, step, seconds):
        after_step(self, step, seconds)
        if step == 60:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(TimeBudget, "after_step", interrupt_at_60)
    first = Trainer(config, False, time.monotonic())
    with pytest.raises(TrainingInterrupted):
        first.fit()
    plan, spent = first.budget.total_steps, first.budget.planner.elapsed()
    saved_clock = float(first.schedule.spent_seconds)  # what the interrupted run's checkpoint holds
    monkeypatch.setattr(TimeBudget, "after_step", after_step)

    started = time.monotonic()
    resumed = Trainer(config, False, started)
    replans = []
    replan = TimeBudget.replan

    def record_replan(self, step):
        replans.append(self.total_steps)
        replan(self, step)

    monkeypatch.setattr(TimeBudget, "replan", record_replan)
    result = resumed.fit()
    assert replans[0] == plan  # the resumed run starts from the interrupted run's plan
    # The clock went on from the first run's time: both runs together keep to one budget.
    assert 0.0 < saved_clock <= spent
    assert resumed.budget.planner.spent_before == pytest.approx(saved_clock, abs=0.01)
    total = spent + time.monotonic() - started
    assert total <= BUDGET_MINUTES * 60 * (1 + SLACK) + 2.0  # + the first run's exit
    assert result.history[-1]["budget_seconds"] <= BUDGET_MINUTES * 60 * (1 + SLACK)
    planned = result.budget["planned_steps"]
    assert 0.95 * planned <= result.steps <= planned and result.steps > 60
    assert resumed._learning_rate() <= 0.01 * 1.5 * FLOOR


def test_budget_too_small_for_one_epoch_is_one_line_and_writes_no_checkpoint(
    synthetic_files, tmp_path, capsys
):
    from translator.cli import main
    from translator.config import dump_config

    out = tmp_path / "out"
    dump_config(_budget_config(synthetic_files, out, minutes=5), tmp_path / "config.yaml")
    code = main(["train", str(tmp_path / "config.yaml"), "--time-budget", "2s", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: train.time_budget=0.0333333 min is too small")
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
