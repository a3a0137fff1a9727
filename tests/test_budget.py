"""The time budget: durations, the planned schedule, the planner's arithmetic."""

from __future__ import annotations

import pytest

from translator.errors import ConfigError
from translator.training.budget import FLOOR, SAFETY, BudgetPlanner, BudgetSchedule, parse_minutes


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


def test_planner_fills_what_is_left_after_the_reserve():
    planner = BudgetPlanner(budget_seconds=1000.0, spent_before=100.0, started=0.0)
    planner.elapsed = lambda: 400.0  # type: ignore[method-assign]
    assert planner.plan(step=50, steps_per_epoch=100) is None  # no speed measured yet
    planner.record_steps(100, 50.0)  # 0.5 s per update
    planner.record_steps(100, 500.0)  # one slow window does not move the median much
    planner.record_steps(100, 50.0)
    free = 1000.0 - 400.0 - SAFETY * 1000.0
    assert planner.plan(step=50, steps_per_epoch=100) == 50 + int(free / 0.5)
    planner.record_epoch_overhead(10.0)  # validation: 10 s per 100 updates
    free -= 10.0  # the final validation is reserved too
    assert planner.plan(step=50, steps_per_epoch=100) == 50 + int(free / 0.6)
    fits, epoch = planner.one_epoch_fits(100)
    assert fits and epoch == pytest.approx(50.0)
    assert not planner.one_epoch_fits(10_000)[0]
