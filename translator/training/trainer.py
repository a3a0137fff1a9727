"""Trainer: builds a run and drives its loop under a tf.distribute strategy.

The loop is written out (instead of `model.fit`) because Keras 3's `fit` fails under
MultiWorkerMirroredStrategy; the same code path runs under every strategy.

Resuming: rerunning the same command continues from the last complete checkpoint and ends with
the step count of an uninterrupted run (see state.py). Fine-tuning (`train.init_from`) starts a
new run from another model's weights and SentencePiece models (see init_from.py). SIGINT or
SIGTERM saves a checkpoint after the current step and raises `TrainingInterrupted` (see
signals.py).

Several workers (see distribute.py): every worker takes its part of each global batch (of the
same global batches, or of its own shard of a streamed corpus, see training/data.py); only the
chief writes the output directory. The others save their checkpoints into a temporary directory
(saving can involve collectives) that is removed at the end, and they start from the chief's
restored state, broadcast over the strategy's collectives, so no shared file system is needed.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import tensorflow as tf

from translator import precision
from translator.config import Config, ModelConfig
from translator.distribute import (
    distribute_batches,
    is_chief,
    make_strategy,
    values_from_chief,
    worker_count,
)
from translator.errors import TrainingError
from translator.model import Seq2Seq, build_model
from translator.model_dir import AVERAGED_DIR
from translator.pipeline import EncodedCorpus
from translator.tokenizer import Tokenizers
from translator.training.budget import TimeBudget, dropout_for_epochs
from translator.training.data import (
    TrainingPairs,
    count_batches,
    epoch_batches,
    eval_batches,
    load_data,
)
from translator.training.history import Recorder
from translator.training.init_from import check_init_from
from translator.training.output_dir import prepare_output_dir, worker_scratch_dir
from translator.training.schedules import make_schedule
from translator.training.signals import StopOnSignal, TrainingInterrupted
from translator.training.state import TrainState
from translator.training.steps import StepFunctions, trace_for_any_shape
from translator.training.validation import Validator

log = logging.getLogger(__name__)

# Updates at learning rate 0 that measure a budgeted run's speed before it trains.
CALIBRATION_STEPS = 8


@dataclass
class TrainResult:
    """What a finished run reports."""

    steps: int
    epochs_done: int
    seconds: float
    tokens_per_second: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    budget: dict | None = None  # with train.time_budget: the budget, what it used, the plan
    dropout: float = 0.0  # the rate trained with (model.dropout, or train.dropout_by_epochs)


class Trainer:
    """Trains a Seq2Seq model from a Config into `config.output_dir`.

    The output directory ends up self-contained (see model_dir.py): the config, the
    SentencePiece models, the last few checkpoints, the best validation BLEU checkpoint, the
    averaged one (with `train.average_last`), TensorBoard logs and the history (one record per
    epoch).
    """

    def __init__(self, config: Config, progress: bool = True, started: float | None = None):
        """`started`: `time.monotonic()` at the start of the process, from which a time
        budget counts (default: now)."""
        self.config = config
        self.started = time.monotonic() if started is None else started
        self.output_dir = Path(config.output_dir)
        self.progress = progress
        self.strategy = make_strategy(config.train.strategy, config.train.cluster_timeout)
        self.is_chief = is_chief(self.strategy)
        # Where checkpoints go: output_dir on the chief, a temporary directory elsewhere.
        self.work_dir = self.output_dir
        self.stopped_early = False
        self.budget: TimeBudget | None = None
        self.init = None  # with train.init_from: the model the run starts from (fit checks it)

    def fit(self) -> TrainResult:
        """Trains until `train.max_steps` or `train.epochs`, resuming from the last checkpoint.

        Raises:
            TrainingInterrupted: SIGINT or SIGTERM arrived; a checkpoint was saved first.
            TrainingError: the loss is not finite, or a checkpoint cannot be written.
        """
        self.init = check_init_from(self.config)  # before anything is written
        if self.is_chief:
            prepare_output_dir(self.config)
            return self._fit()
        with worker_scratch_dir() as self.work_dir:
            return self._fit()

    # -- building ----------------------------------------------------------------------------

    def _build(self, tokenizers: Tokenizers) -> None:
        """The model, schedule, optimizer, the run's state and the compiled steps."""
        cfg = self.config
        # Layers take the global policy when built: set it both ways (a process may train twice).
        policy, why = precision.resolve(cfg.train.mixed_precision)
        keras.mixed_precision.set_global_policy(policy)
        (log.warning if "warning" in why else log.info)("computing in %s (%s)", policy, why)
        with self.strategy.scope():
            self.model: Seq2Seq = build_model(
                _built_dropout(cfg), tokenizers.source_vocab_size, tokenizers.target_vocab_size
            )
            self.schedule = make_schedule(cfg.train)
            # No clipping here: Keras would clip each replica's gradient (see steps.py).
            self.optimizer = keras.optimizers.Adam(learning_rate=self.schedule)
            self.optimizer.build(self.model.trainable_variables)
        self.state = TrainState(
            self.model, self.optimizer, self.schedule, self.work_dir, cfg.train, self.is_chief
        )
        self._compile_steps()

    def _compile_steps(self) -> None:
        """New train and eval step functions of the model as it is now, traced at first use."""
        steps = StepFunctions(self.model, self.optimizer, self.strategy, self.config.train)
        self._train_step, self._eval_step = steps.train_step, steps.eval_step
        self._traced: set[str] = set()

    def _trace_once(self, name: str, function, batch, *specs) -> None:
        """Traces step `name` for batches of any shape before its first call (see steps.py)."""
        if name not in self._traced:
            self._traced.add(name)
            trace_for_any_shape(function, batch, *specs)

    def _restore(self, tokenizers: Tokenizers) -> None:
        """Restores the latest checkpoint on the chief and hands its state to every worker."""
        vocabulary = tokenizers.source_model + tokenizers.target_model
        output_dir = self.output_dir if self.is_chief else None
        self.state.restore(self.strategy, vocabulary, output_dir, self.init)
        if self.is_chief and not self._done():
            # Averaged weights from an earlier end of training would be stale after this run.
            shutil.rmtree(self.output_dir / AVERAGED_DIR, ignore_errors=True)

    # -- the loop ----------------------------------------------------------------------------

    def _fit(self) -> TrainResult:
        cfg = self.config.train
        # Seed first: seeding clears TensorFlow's kernel cache, which would drop the
        # SentencePiece resources of tokenizers created before it.
        keras.utils.set_random_seed(cfg.seed)
        tokenizers, pairs, valid = load_data(
            self.config,
            self.output_dir,
            self.work_dir,
            self.is_chief,
            self.init.tokenizers if self.init else None,
        )
        self._build(tokenizers)
        self.stopped_early, self.budget = False, None
        self._restore(tokenizers)
        self.validator = Validator(self.config, valid, tokenizers, self.state, self.evaluate_loss)
        self.budget = self._start_budget(pairs) if cfg.time_budget else None
        dropout = self._plan_dropout(pairs)
        state = self.state
        self.recorder = Recorder(self.output_dir, self.is_chief, self.progress, cfg, state)
        self._start, self._tokens_seen = time.perf_counter(), 0.0
        signals = StopOnSignal().install()
        try:
            while not self._done():
                totals, complete = self._train_epoch(pairs, signals)
                began = time.perf_counter()
                if complete or self.budget is not None:  # a budget validates its last update
                    self._end_of_epoch(*totals, complete=complete)
                self._save()
                if self.budget is not None and complete:
                    self.budget.after_epoch(time.perf_counter() - began)
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as exc:
            if worker_count(self.strategy) == 1:
                raise
            raise TrainingError(
                f"lost contact with another worker after step {int(state.step)} "
                f"({_first_line(exc)}); the last checkpoint is kept: start the same command "
                "on every worker again to resume"
            ) from None
        finally:
            signals.restore()
            self.recorder.close()
        if self.is_chief and cfg.average_last:
            model = build_model(  # a local copy, outside the strategy: only the chief averages
                self.config.model, self.model.source_vocab_size, self.model.target_vocab_size
            )
            state.write_average(cfg.average_last, model, self.output_dir / AVERAGED_DIR)
        seconds = time.perf_counter() - self._start
        budget = self.budget.summary() if self.budget is not None else None
        if budget is not None:
            log.info(
                "time budget: used %.1f of %g min; %d updates (%.2f epochs)",
                budget["budget_used_minutes"],
                budget["time_budget_minutes"],
                int(state.step),
                int(state.step) / self.budget.steps_per_epoch,
            )
        return TrainResult(
            int(state.step),
            int(state.epoch),
            seconds,
            self._tokens_seen / seconds if seconds else 0.0,
            self.recorder.history,
            self.stopped_early,
            budget,
            dropout,
        )

    def _save(self) -> None:
        """Saves a checkpoint at the current step, the budget's clock with it."""
        if self.budget is not None:
            self.budget.before_save()
        self.state.save()

    # -- the time budget ---------------------------------------------------------------------

    def _start_budget(self, pairs: TrainingPairs) -> TimeBudget:
        """The run's budget: speed measured before a new run's first update (a budget that
        cannot hold one epoch is refused there), then the first plan."""

        def agree(total: int) -> int:  # every worker takes the chief's plan
            if worker_count(self.strategy) == 1:
                return total
            return int(values_from_chief(self.strategy, [tf.constant(total, tf.int64)])[0])

        budget = TimeBudget(
            self.config.train,
            self.schedule,
            count_batches(pairs, self.config, worker_count(self.strategy)),
            self.started,
            agree,
            worker_count(self.strategy) == 1,
        )
        if int(self.state.step) == 0:
            budget.calibrate(self._calibrate(pairs), self.validator.cost_estimate())
        budget.replan(int(self.state.step))
        return budget

    def _plan_dropout(self, pairs: TrainingPairs) -> float:
        """The run's dropout: `model.dropout`, or `train.dropout_by_epochs` read at the planned
        epochs (a budget's first plan, or a resumed run's restored plan; else `epochs` or
        `max_steps`). A new rate takes new step functions, traced again."""
        cfg = self.config.train
        if not cfg.dropout_by_epochs:
            return self.model.dropout
        if self.budget is not None:
            per_epoch = self.budget.steps_per_epoch
            steps = self.budget.total_steps
        else:
            per_epoch = count_batches(pairs, self.config, worker_count(self.strategy))
            steps = min(s for s in (cfg.max_steps, cfg.epochs * per_epoch) if s)
        planned = steps / per_epoch
        rate = dropout_for_epochs(cfg.dropout_by_epochs, planned)
        log.info("dropout %.3g for %.1f planned epochs (train.dropout_by_epochs)", rate, planned)
        if rate != self.model.dropout:
            with self.strategy.scope():
                self.model.set_dropout(rate)
            self._compile_steps()
            if self.budget is not None:
                self.budget.skip_window = True  # the first window traces again: not a speed
        return rate

    def _calibrate(self, pairs: TrainingPairs) -> list[float]:
        """Seconds of each of CALIBRATION_STEPS updates at learning rate 0 (the weights do not
        move), after which the optimizer's state is reset: a new run's speed, measured before
        it trains. Every worker gets the chief's figures."""
        self.schedule.scale.assign(0.0)
        stop = tf.constant(0.0)
        workers = worker_count(self.strategy)
        batches = epoch_batches(pairs, self.config, 0, 0, workers, take=CALIBRATION_STEPS)
        seconds = []
        for batch in distribute_batches(self.strategy, batches):
            began = time.perf_counter()
            self._trace_once("train", self._train_step, batch, tf.TensorSpec([], tf.float32))
            float(self._train_step(batch, stop)[0])
            seconds.append(time.perf_counter() - began)
        for variable in self.optimizer.variables:
            if not variable.path.endswith("learning_rate"):
                variable.assign(tf.zeros_like(variable))
        self.schedule.scale.assign(1.0)
        if worker_count(self.strategy) > 1:
            chief = values_from_chief(self.strategy, [tf.constant(seconds, tf.float64)])[0]
            seconds = [float(s) for s in chief.numpy()]
        return seconds

    def _done(self) -> bool:
        """Whether the run is over: the one stop rule, checked before each epoch and after
        each step (a signal stops the run by raising instead)."""
        cfg = self.config.train
        if self.stopped_early:
            return True
        if cfg.max_steps and int(self.state.step) >= cfg.max_steps:
            return True
        if self.budget is not None and self.budget.done(int(self.state.step)):
            return True
        return bool(cfg.epochs) and int(self.state.epoch) >= cfg.epochs

    def _train_epoch(
        self, pairs: TrainingPairs, signals: StopOnSignal
    ) -> tuple[tuple[int, float, float, float], bool]:
        """Trains on the rest of the current epoch, until its batches run out or the run is done.

        Returns:
            ((epoch, loss sum, tokens, training seconds before it), complete): complete when
            the batches ran out, not when the run ended within the epoch.
        """
        cfg, state = self.config.train, self.state
        epoch = int(state.epoch)
        skip, workers = int(state.batch_in_epoch), worker_count(self.strategy)
        batches = epoch_batches(pairs, self.config, epoch, skip, workers)
        loss_sum = tokens_sum = 0.0
        seconds_before = float(state.train_seconds)
        step_start = time.perf_counter()
        for batch in distribute_batches(self.strategy, batches):
            self._trace_once("train", self._train_step, batch, tf.TensorSpec([], tf.float32))
            loss, tokens, stopping = self._train_step(batch, signals.flag())
            loss, tokens = float(loss), float(tokens)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss} at step {int(state.step) + 1}; stopped without "
                    f"saving. Last good checkpoint: {state.latest_checkpoint}. "
                    "Lower train.learning_rate or train.clip_norm and rerun"
                )
            now = time.perf_counter()
            state.count_step(now - step_start)
            step = int(state.step)
            if self.budget is not None:
                self.budget.after_step(step, now - step_start)
            step_start = now
            loss_sum += loss * tokens
            tokens_sum += tokens
            self._tokens_seen += tokens
            speed = self._tokens_seen / (time.perf_counter() - self._start)
            self.recorder.step(step, epoch, loss, speed, self._learning_rate)
            if step % cfg.checkpoint_every == 0:
                self._save()
            if float(stopping):  # a signal reached this or another worker
                self._save()
                saved = state.latest_checkpoint if self.is_chief else "the chief's checkpoint"
                raise TrainingInterrupted.at_step(signals.signum, step, saved)
            if self._done():
                return (epoch, loss_sum, tokens_sum, seconds_before), False
        return (epoch, loss_sum, tokens_sum, seconds_before), True

    def _end_of_epoch(
        self, epoch: int, loss_sum: float, tokens: float, seconds_before: float, complete=True
    ) -> None:
        """Advances the epoch; validation, the epoch's record, early stopping. A time budget
        also validates the run's last update within an epoch (`complete` False): that record
        is marked `partial_epoch` and the epoch does not advance."""
        state = self.state
        if complete:
            state.next_epoch()
        record = {
            "epoch": epoch + 1,
            "step": int(state.step),
            "train_loss": loss_sum / max(tokens, 1.0),
            **self.validator.validate(),
        }
        self.recorder.epoch_summary(record)
        # Tokens/s of this run's part of the epoch (a resumed epoch: its rest).
        seconds = float(state.train_seconds)
        record["tokens_per_second"] = round(tokens / max(seconds - seconds_before, 1e-9), 1)
        record["seconds"] = round(seconds, 1)
        if self.budget is not None:
            record["budget_seconds"] = round(self.budget.planner.elapsed(), 1)
        if not complete:
            record["partial_epoch"] = True
        self.recorder.append(record)
        if self.validator.patience_spent():
            log.info("early stopping: no BLEU gain for %d epochs", int(state.bad_epochs))
            self.stopped_early = True

    def _learning_rate(self) -> float:
        """The rate the last step ran with."""
        return float(self.schedule(self.optimizer.iterations - 1))

    def evaluate_loss(self, encoded: EncodedCorpus) -> float:
        """Token-weighted mean cross-entropy over an encoded corpus (no shuffling)."""
        total = count = 0.0
        for batch in distribute_batches(self.strategy, eval_batches(encoded, self.config)):
            self._trace_once("eval", self._eval_step, batch)
            loss, tokens = self._eval_step(batch)
            total += float(loss) * float(tokens)
            count += float(tokens)
        return total / max(count, 1.0)


def _built_dropout(config: Config) -> ModelConfig:
    """The model section to build with: with `train.dropout_by_epochs`, the table's largest rate
    (every dropout layer then has its random numbers; `_plan_dropout` sets the run's rate)."""
    table = config.train.dropout_by_epochs
    if not table:
        return config.model
    return replace(config.model, dropout=max(rate for _, rate in table))


def _first_line(exc: tf.errors.OpError) -> str:
    """TensorFlow's message without its `{{function_node ...}}` prefix, first line only."""
    text = re.sub(r"^\{\{[^}]*\}\}\s*", "", exc.message or "")
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def train(config: Config, progress: bool = True, started: float | None = None) -> TrainResult:
    """Trains a model as described by `config` (see Trainer); returns the run's summary.

    `started`: `time.monotonic()` at the start of the process, from which `train.time_budget`
    counts (default: now).
    """
    result = Trainer(config, progress=progress, started=started).fit()
    summary = {k: v for k, v in result.__dict__.items() if k != "history"}
    log.info("training done: %s", summary)
    return result
