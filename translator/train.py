"""Trainer: a custom loop under a tf.distribute strategy, with checkpoints that resume exactly.

The loop is written out (instead of `model.fit`) because Keras 3's `fit` fails under
MultiWorkerMirroredStrategy; the same code path runs under every strategy. Losses are averaged
per target token across the whole global batch (`tf.nn.compute_average_loss` with the global
token count), so a replica's share of the gradient matches its share of the tokens.

Resuming: the checkpoint holds the step, the epoch and how many batches of that epoch were
done. Each epoch's data order depends only on `seed + epoch`, so rerunning the same command
skips exactly the finished batches and ends with the step count of an uninterrupted run. A
killed run resumes from its last complete checkpoint (see checkpoints.py); SIGINT or SIGTERM
saves a checkpoint after the current step and raises `TrainingInterrupted` (the CLI exits with
128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM).

Several workers (see distribute.py): every worker trains on the same global batches; only the
chief writes the output directory. The others save their checkpoints into a temporary directory
(saving can involve collectives) that is removed at the end, and they start from the chief's
restored state, broadcast over the strategy's collectives, so no shared file system is needed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf
from tqdm import tqdm

from translator import checkpoints, precision
from translator import data as data_lib
from translator.config import Config, dump_config, load_config
from translator.distribute import (
    check_same_everywhere,
    distribute_batches,
    is_chief,
    make_strategy,
    sync_from_chief,
    worker_count,
)
from translator.errors import ConfigError, TrainingError
from translator.model import Seq2Seq, build_model
from translator.pipeline import EncodedCorpus, encode_corpus, make_dataset
from translator.tokenizer import SOURCE_FILE, TARGET_FILE, Tokenizers, load_or_train

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
HISTORY_FILE = "history.json"


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then constant or inverse-square-root decay, times a plateau `scale`."""

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


def sequence_loss(labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Per-token cross-entropy `labels.shape` from logits `[..., vocab]` (padding not masked).

    With label smoothing the target distribution is (1 - eps) * one_hot + eps / vocab, as in
    Keras's categorical cross-entropy, computed without materialising a [..., vocab] one-hot:
    -sum(q * log p) = (1 - eps) * nll + eps * mean(-log p).
    """
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))  # [..., vocab]
    nll = -tf.gather(log_probs, labels[..., None], batch_dims=labels.shape.rank)[..., 0]
    if label_smoothing > 0.0:
        return (1.0 - label_smoothing) * nll - label_smoothing * tf.reduce_mean(log_probs, -1)
    return nll


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
        index = tf.where(tf.not_equal(target_out, 0))  # [tokens, 2]
        logits = model.decoder.project(tf.gather_nd(features, index))  # [tokens, vocab]
        return sequence_loss(tf.gather_nd(target_out, index), logits, label_smoothing)
    mask = tf.cast(tf.not_equal(target_out, 0), tf.float32)  # [batch, time]
    per_token = sequence_loss(target_out, model.decoder.project(features), label_smoothing)
    return tf.reshape(per_token * mask, [-1])


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint.

    Attributes:
        exit_code: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class _StopOnSignal:
    """Once installed, SIGINT/SIGTERM ask the loop to stop after the current step.

    A second signal raises KeyboardInterrupt at once (the last checkpoint stays as it was).
    Handlers can only be installed from the main thread; elsewhere signals keep their handlers.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            # None: the handler was not installed from Python (TensorFlow's SIGTERM notifier).
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s received: saving a checkpoint after this step (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def flag(self) -> tf.Tensor:
        return tf.constant(0.0 if self.signum is None else 1.0)


@dataclass
class TrainResult:
    """What a finished run reports."""

    steps: int
    epochs_done: int
    seconds: float
    tokens_per_second: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


class Trainer:
    """Trains a Seq2Seq model from a Config into `config.output_dir`.

    The output directory ends up self-contained: config.yaml, the SentencePiece models,
    checkpoints/ (the last few), best/ (best validation BLEU), averaged/ (with
    `train.average_last`), logs/ (TensorBoard) and history.json (one record per epoch).
    """

    def __init__(self, config: Config, progress: bool = True):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.progress = progress
        self.strategy = make_strategy(config.train.strategy, config.train.cluster_timeout)
        self.is_chief = is_chief(self.strategy)
        # Where checkpoints go: output_dir on the chief, a temporary directory elsewhere.
        self.work_dir = self.output_dir

    # -- setup -------------------------------------------------------------------------------

    def _prepare_output_dir(self) -> None:
        out = self.output_dir
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"output_dir {out} is not writable: {exc.strerror}") from None
        previous = out / "config.yaml"
        if previous.is_file():
            old = load_config(previous)
            for section in ("model", "tokenizer"):
                if getattr(old, section) != getattr(self.config, section):
                    raise ConfigError(
                        f"output_dir {out} holds a model trained with a different '{section}' "
                        "section; use a new output_dir or the original settings"
                    )
        dump_config(self.config, previous)

    def _load_data(self) -> tuple[Tokenizers, EncodedCorpus, data_lib.ParallelCorpus | None]:
        data_cfg = self.config.data
        train = data_lib.load_corpus(data_cfg, "train")
        log.info(
            "train corpus: %d pairs from %s (%d empty skipped)",
            len(train),
            train.origin,
            train.skipped_empty,
        )
        valid = None
        if data_cfg.valid.source or data_cfg.tfds:
            valid = data_lib.load_corpus(data_cfg, "valid")
            log.info("valid corpus: %d pairs from %s", len(valid), valid.origin)
        else:
            log.warning("no validation data configured: skipping validation loss and BLEU")
        # Other workers read the chief's vocabulary when they see it (shared or resumed
        # output_dir) and otherwise train the same one (SentencePiece training is
        # deterministic); fit() checks that every worker ended up with the same models.
        source = self.output_dir if self.is_chief or _has_tokenizers(self.output_dir) else None
        tokenizers = load_or_train(
            source or self.work_dir,
            train.sources,
            train.targets,
            self.config.tokenizer,
            self.config.train.seed,
        )
        encoded = encode_corpus(tokenizers, train.sources, train.targets, data_cfg.max_length)
        if len(encoded) == 0:
            raise TrainingError(
                f"no training pairs left after the length filter "
                f"(data.max_length={data_cfg.max_length})"
            )
        self.dropped_long = encoded.dropped_long
        return tokenizers, encoded, valid

    # -- steps -------------------------------------------------------------------------------

    def _build(self, tokenizers: Tokenizers) -> None:
        cfg = self.config
        # Layers take the global policy when built: set it both ways (a process may train twice).
        policy, why = precision.resolve(cfg.train.mixed_precision)
        keras.mixed_precision.set_global_policy(policy)
        (log.warning if "warning" in why else log.info)("computing in %s (%s)", policy, why)
        with self.strategy.scope():
            self.model: Seq2Seq = build_model(
                cfg.model, tokenizers.source_vocab_size, tokenizers.target_vocab_size
            )
            self.schedule = LearningRate(
                cfg.train.learning_rate, cfg.train.warmup_steps, cfg.train.lr_schedule
            )
            # No clipping here: Keras would clip each replica's gradient (see train step).
            self.optimizer = keras.optimizers.Adam(learning_rate=self.schedule)
            self.optimizer.build(self.model.trainable_variables)
        # Loop counters: plain variables (outside the strategy), read and set in Python only.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.batch_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch")
        self.best_bleu = tf.Variable(-1.0, dtype=tf.float32, trainable=False, name="best")
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")
        # Wall-clock seconds spent in training steps, summed over resumed runs (checkpointed).
        self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="seconds")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            step=self.step,
            epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch,
            best_bleu=self.best_bleu,
            bad_epochs=self.bad_epochs,
            lr_scale=self.schedule.scale,
            train_seconds=self.train_seconds,
        )
        keep = max(cfg.train.keep_checkpoints, cfg.train.average_last, 1)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            self.work_dir / CHECKPOINT_DIR,
            max_to_keep=keep if self.is_chief else 1,
        )
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model, step=self.step),
            self.work_dir / BEST_DIR,
            max_to_keep=1,
        )
        jit = cfg.train.jit_compile
        replica_train = tf.function(
            self._replica_train_step, jit_compile=jit, reduce_retracing=True
        )
        replica_eval = tf.function(self._replica_eval_step, jit_compile=jit, reduce_retracing=True)
        self._train_step = tf.function(
            lambda batch, stop: self._run(replica_train, batch, stop), reduce_retracing=True
        )
        self._eval_step = tf.function(
            lambda batch: self._run(replica_eval, batch)[:2], reduce_retracing=True
        )
        self._traced_for_any_shape: set[str] = set()

    def _trace_for_any_shape(self, name: str, function, batch, *specs) -> None:
        """Traces `function` once for batches of every shape, before its first call.

        Left to `reduce_retracing`, a step function is traced three times (the first batch's
        shape, then again as each dimension turns out to vary): seconds each, per process.
        Batches split over replicas are left to trace as they come.
        """
        if name in self._traced_for_any_shape:
            return
        self._traced_for_any_shape.add(name)
        if all(isinstance(t, tf.Tensor) for t in batch):
            relaxed = tuple(tf.TensorSpec([None] * t.shape.rank, t.dtype) for t in batch)
            function.get_concrete_function(relaxed, *specs)

    def _masked_loss(self, batch, training: bool, stop=None):
        """This replica's share of the global mean loss, its token count, the global stop flag."""
        target_out = batch[2]
        tokens = tf.reduce_sum(tf.cast(tf.not_equal(target_out, 0), tf.float32))
        ctx = tf.distribute.get_replica_context()
        # One all-reduce for both: the global token count and whether any worker must stop.
        stop = tf.constant(0.0) if stop is None else stop
        global_tokens, stop = tf.unstack(ctx.all_reduce("sum", tf.stack([tokens, stop])))
        cfg = self.config.train
        per_token = token_losses(
            self.model, batch, cfg.label_smoothing, training, packed=cfg.packed_loss
        )
        loss = tf.nn.compute_average_loss(
            per_token, global_batch_size=tf.cast(tf.maximum(global_tokens, 1.0), tf.int64)
        )
        return loss, tokens, stop

    def _replica_train_step(self, batch, stop):
        with tf.GradientTape() as tape:
            loss, tokens, stop = self._masked_loss(batch, training=True, stop=stop)
        grads, variables = [], []
        for grad, variable in zip(
            tape.gradient(loss, self.model.trainable_variables),
            self.model.trainable_variables,
            strict=True,
        ):
            if grad is not None:
                # Dense: Keras's Adam squares IndexedSlices values before summing repeated
                # rows (an embedding row used twice), which is not the gradient's square.
                grads.append(tf.convert_to_tensor(grad))
                variables.append(variable)
        clip = self.config.train.clip_norm
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
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss, tokens, stop

    def _replica_eval_step(self, batch):
        return self._masked_loss(batch, training=False)

    def _run(self, replica_fn, batch, *args):
        """Runs `replica_fn` on every replica: global mean loss, global tokens, stop flag."""
        loss, tokens, stop = self.strategy.run(replica_fn, args=(batch, *args))
        return (
            self.strategy.reduce("sum", loss, axis=None),
            self.strategy.reduce("sum", tokens, axis=None),
            self.strategy.reduce("mean", stop, axis=None),  # already global: same everywhere
        )

    # -- loop --------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Trains until `train.max_steps` or `train.epochs`, resuming from the last checkpoint.

        Raises:
            TrainingInterrupted: SIGINT or SIGTERM arrived; a checkpoint was saved first.
            TrainingError: the loss is not finite, or a checkpoint cannot be written.
        """
        if self.is_chief:
            self._prepare_output_dir()
            return self._fit()
        self.work_dir = Path(tempfile.mkdtemp(prefix="translator-worker-"))
        try:
            return self._fit()
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _restore(self, tokenizers: Tokenizers) -> None:
        """Restores the latest checkpoint on the chief and hands its state to every worker."""
        if self.is_chief:
            for name in (CHECKPOINT_DIR, BEST_DIR, checkpoints.AVERAGED_DIR):
                checkpoints.remove_unreferenced(self.output_dir / name)
        restored = self.manager.restore_or_initialize()
        check_same_everywhere(
            self.strategy,
            tokenizers.source_model + tokenizers.target_model,
            "the SentencePiece models (tokenizer section and training data)",
        )
        variables = [
            *self.model.variables,
            *self.optimizer.variables,
            self.step,
            self.epoch,
            self.batch_in_epoch,
            self.best_bleu,
            self.bad_epochs,
            self.schedule.scale,
            self.train_seconds,
        ]
        sync_from_chief(self.strategy, variables)
        if restored or int(self.step):
            log.info(
                "resumed from %s at step %d (epoch %d, batch %d)",
                restored or "the chief's checkpoint",
                int(self.step),
                int(self.epoch) + 1,
                int(self.batch_in_epoch),
            )
        if self.is_chief and not self._done():
            # Averaged weights from an earlier end of training would be stale after this run.
            shutil.rmtree(self.output_dir / checkpoints.AVERAGED_DIR, ignore_errors=True)

    def _save(self, step: int) -> None:
        checkpoints.save(self.manager, step)

    def _interrupted(self, signum: int | None, step: int) -> TrainingInterrupted:
        signum = signum or signal.SIGTERM  # None: another worker was signalled
        saved = self.manager.latest_checkpoint if self.is_chief else "the chief's checkpoint"
        return TrainingInterrupted(
            f"interrupted by {signal.Signals(signum).name} at step {step}; saved {saved}; "
            "run the same command again to resume",
            signum,
        )

    def _fit(self) -> TrainResult:
        cfg = self.config.train
        # Seed first: seeding clears TensorFlow's kernel cache, which would drop the
        # SentencePiece resources of tokenizers created before it.
        keras.utils.set_random_seed(cfg.seed)
        tokenizers, encoded, valid = self._load_data()
        self._build(tokenizers)
        self._restore(tokenizers)
        valid_encoded = (
            encode_corpus(tokenizers, valid.sources, valid.targets, self.config.data.max_length)
            if valid is not None
            else None
        )
        from translator.api import Translator  # late import: api imports this module's users

        translator = Translator(self.model, tokenizers, self.config)
        history = self._read_history() if self.is_chief else []
        if self.is_chief:
            writer = tf.summary.create_file_writer(str(self.output_dir / "logs"))
        else:
            writer = tf.summary.create_noop_writer()
        start, tokens_seen, stopped_early = time.perf_counter(), 0.0, False
        total_steps = cfg.max_steps or None
        bar = tqdm(
            total=total_steps,
            initial=int(self.step),
            unit="step",
            file=sys.stderr,
            disable=not (self.progress and self.is_chief),
            dynamic_ncols=True,
            mininterval=1.0,
        )
        signals = _StopOnSignal().install()
        try:
            while not self._done():
                epoch = int(self.epoch)
                ds = make_dataset(
                    encoded,
                    cfg.batch_size,
                    cfg.batch_tokens,
                    cfg.bucket_width,
                    self.config.data.max_length,
                    shuffle=True,
                    seed=cfg.seed,
                    epoch=epoch,
                    shuffle_buffer=cfg.shuffle_buffer,
                    fixed_shapes=cfg.jit_compile,
                ).skip(int(self.batch_in_epoch))
                epoch_loss = epoch_tokens = 0.0
                seconds_before_epoch = float(self.train_seconds)
                step_start = time.perf_counter()
                for batch in distribute_batches(self.strategy, ds):
                    self._trace_for_any_shape(
                        "train", self._train_step, batch, tf.TensorSpec([], tf.float32)
                    )
                    loss, tokens, stopping = self._train_step(batch, signals.flag())
                    loss, tokens = float(loss), float(tokens)
                    if not math.isfinite(loss):
                        raise TrainingError(
                            f"loss became {loss} at step {int(self.step) + 1}; stopped without "
                            f"saving. Last good checkpoint: {self.manager.latest_checkpoint}. "
                            "Lower train.learning_rate or train.clip_norm and rerun"
                        )
                    self.step.assign_add(1)
                    self.batch_in_epoch.assign_add(1)
                    now = time.perf_counter()
                    self.train_seconds.assign_add(now - step_start)
                    step_start = now
                    epoch_loss += loss * tokens
                    epoch_tokens += tokens
                    tokens_seen += tokens
                    elapsed = time.perf_counter() - start
                    bar.update(1)
                    step = int(self.step)
                    if step % cfg.log_every == 0:
                        bar.set_postfix(
                            epoch=epoch + 1,
                            loss=f"{loss:.3f}",
                            tok_s=f"{tokens_seen / elapsed:.0f}",
                        )
                        with writer.as_default(step=step):
                            tf.summary.scalar("train/loss", loss)
                            tf.summary.scalar("train/tokens_per_second", tokens_seen / elapsed)
                            tf.summary.scalar(
                                "train/learning_rate",
                                float(self.schedule(self.optimizer.iterations - 1)),
                            )
                    if step % cfg.checkpoint_every == 0:
                        self._save(step)
                    if float(stopping):  # a signal reached this or another worker
                        self._save(step)
                        raise self._interrupted(signals.signum, step)
                    if cfg.max_steps and step >= cfg.max_steps:
                        break
                else:  # the epoch ran out of batches
                    self.epoch.assign_add(1)
                    self.batch_in_epoch.assign(0)
                    record = self._end_of_epoch(
                        epoch, epoch_loss, epoch_tokens, translator, valid, valid_encoded, writer
                    )
                    # Tokens/s of this run's part of the epoch (a resumed epoch: its rest).
                    seconds = float(self.train_seconds)
                    epoch_seconds = max(seconds - seconds_before_epoch, 1e-9)
                    record["tokens_per_second"] = round(epoch_tokens / epoch_seconds, 1)
                    record["seconds"] = round(seconds, 1)
                    history.append(record)
                    self._write_history(history)
                    if (
                        cfg.early_stopping_patience
                        and int(self.bad_epochs) >= cfg.early_stopping_patience
                    ):
                        log.info("early stopping: no BLEU gain for %d epochs", int(self.bad_epochs))
                        stopped_early = True
                        self._save(int(self.step))
                        break
                self._save(int(self.step))
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as exc:
            if worker_count(self.strategy) == 1:
                raise
            raise TrainingError(
                f"lost contact with another worker after step {int(self.step)} "
                f"({_first_line(exc)}); the last checkpoint is kept: start the same command "
                "on every worker again to resume"
            ) from None
        finally:
            signals.restore()
            bar.close()
            writer.flush()
        if self.is_chief and cfg.average_last:
            self._average()
        seconds = time.perf_counter() - start
        return TrainResult(
            int(self.step),
            int(self.epoch),
            seconds,
            tokens_seen / seconds if seconds else 0.0,
            history,
            stopped_early,
        )

    def _done(self) -> bool:
        cfg = self.config.train
        if cfg.max_steps and int(self.step) >= cfg.max_steps:
            return True
        return bool(cfg.epochs) and int(self.epoch) >= cfg.epochs

    def _end_of_epoch(
        self, epoch, epoch_loss, epoch_tokens, translator, valid, valid_encoded, writer
    ) -> dict:
        """Validation loss and BLEU, best checkpoint, plateau and early-stopping bookkeeping."""
        record = {
            "epoch": epoch + 1,
            "step": int(self.step),
            "train_loss": epoch_loss / max(epoch_tokens, 1.0),
        }
        if valid is not None:
            record["valid_loss"] = self.evaluate_loss(valid_encoded)
            n = self.config.train.eval_bleu_sentences or len(valid)
            from translator.evaluate import score  # noqa: PLC0415

            hyps = translator.translate(valid.sources[:n])
            scores = score(hyps, valid.targets[:n])
            record["valid_bleu"], record["valid_chrf"] = scores["bleu"], scores["chrf"]
            if record["valid_bleu"] > float(self.best_bleu):
                self.best_bleu.assign(record["valid_bleu"])
                self.bad_epochs.assign(0)
                checkpoints.save(self.best_manager, int(self.step))
            else:
                self.bad_epochs.assign_add(1)
                if self.config.train.lr_schedule == "plateau":
                    self.schedule.scale.assign(self.schedule.scale * 0.5)
        with writer.as_default(step=int(self.step)):
            for key, value in record.items():
                if key not in ("epoch", "step"):
                    tf.summary.scalar(f"epoch/{key}", value)
        log.info(
            "epoch %d: %s",
            epoch + 1,
            ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"),
        )
        print(
            f"epoch {epoch + 1} "
            + " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"),
            file=sys.stderr,
        )
        return record

    def evaluate_loss(self, encoded: EncodedCorpus) -> float:
        """Token-weighted mean cross-entropy over an encoded corpus (no shuffling)."""
        cfg = self.config.train
        ds = make_dataset(
            encoded,
            cfg.batch_size,
            cfg.batch_tokens,
            cfg.bucket_width,
            self.config.data.max_length,
            shuffle=False,
            fixed_shapes=cfg.jit_compile,
        )
        total = count = 0.0
        for batch in distribute_batches(self.strategy, ds):
            self._trace_for_any_shape("eval", self._eval_step, batch)
            loss, tokens = self._eval_step(batch)
            total += float(loss) * float(tokens)
            count += float(tokens)
        return total / max(count, 1.0)

    def _read_history(self) -> list[dict]:
        path = self.output_dir / HISTORY_FILE
        if not path.is_file():
            return []
        done = int(self.epoch)
        return [r for r in json.loads(path.read_text()) if r["epoch"] <= done]

    def _write_history(self, history: list[dict]) -> None:
        if not self.is_chief:
            return
        path = self.output_dir / HISTORY_FILE
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(history, indent=1))
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TrainingError(f"cannot write {path}: {exc.strerror}") from None

    def _average(self) -> None:
        """Writes the mean weights of the last `train.average_last` checkpoints to averaged/."""
        n = self.config.train.average_last
        paths = self.manager.checkpoints[-n:]
        if len(paths) < n:
            log.warning("average_last=%d but only %d checkpoints exist", n, len(paths))
        model = build_model(  # a local copy, outside the strategy: only the chief averages
            self.config.model, self.model.source_vocab_size, self.model.target_vocab_size
        )
        checkpoints.write_averaged(
            model, paths, self.output_dir / checkpoints.AVERAGED_DIR, int(self.step)
        )


def _first_line(exc: tf.errors.OpError) -> str:
    """TensorFlow's message without its `{{function_node ...}}` prefix, first line only."""
    text = re.sub(r"^\{\{[^}]*\}\}\s*", "", exc.message or "")
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def _has_tokenizers(directory: Path) -> bool:
    return all((directory / name).is_file() for name in (SOURCE_FILE, TARGET_FILE))


def train(config: Config, progress: bool = True) -> TrainResult:
    """Trains a model as described by `config` (see Trainer); returns the run's summary."""
    result = Trainer(config, progress=progress).fit()
    summary = {k: v for k, v in result.__dict__.items() if k != "history"}
    log.info("training done: %s", summary)
    return result
