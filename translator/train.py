"""Trainer: a custom loop under a tf.distribute strategy, with checkpoints that resume exactly.

The loop is written out (instead of `model.fit`) because Keras 3's `fit` fails under
MultiWorkerMirroredStrategy; the same code path runs under every strategy. Losses are averaged
per target token across the whole global batch (`tf.nn.compute_average_loss` with the global
token count), so a replica's share of the gradient matches its share of the tokens.

Resuming: the checkpoint holds the step, the epoch and how many batches of that epoch were
done. Each epoch's data order depends only on `seed + epoch`, so rerunning the same command
skips exactly the finished batches and ends with the step count of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf
from tqdm import tqdm

from translator import data as data_lib
from translator.config import Config, dump_config, load_config
from translator.errors import ConfigError, TrainingError
from translator.model import Seq2Seq, build_model
from translator.pipeline import EncodedCorpus, encode_corpus, make_dataset
from translator.tokenizer import Tokenizers, load_or_train

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
    """Per-token cross-entropy [batch, time] (padding not yet masked).

    With label smoothing the target distribution is (1 - eps) * one_hot + eps / vocab, as in
    Keras's categorical cross-entropy.
    """
    logits = tf.cast(logits, tf.float32)
    if label_smoothing > 0.0:
        one_hot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=tf.float32)
        return keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=True, label_smoothing=label_smoothing
        )
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy named by `train.strategy`."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError(
                "train.strategy=multi_worker needs the TF_CONFIG environment variable"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


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
    checkpoints/ (the last few), best/ (best validation BLEU), logs/ (TensorBoard) and
    history.json (one record per epoch).
    """

    def __init__(self, config: Config, progress: bool = True):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.progress = progress
        self.strategy = make_strategy(config.train.strategy)

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
        tokenizers = load_or_train(
            self.output_dir,
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
        if cfg.train.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        with self.strategy.scope():
            self.model: Seq2Seq = build_model(
                cfg.model, tokenizers.source_vocab_size, tokenizers.target_vocab_size
            )
            self.schedule = LearningRate(
                cfg.train.learning_rate, cfg.train.warmup_steps, cfg.train.lr_schedule
            )
            self.optimizer = keras.optimizers.Adam(
                learning_rate=self.schedule, global_clipnorm=cfg.train.clip_norm or None
            )
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.batch_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch")
            self.best_bleu = tf.Variable(-1.0, dtype=tf.float32, trainable=False, name="best")
            self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            step=self.step,
            epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch,
            best_bleu=self.best_bleu,
            bad_epochs=self.bad_epochs,
            lr_scale=self.schedule.scale,
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            self.output_dir / CHECKPOINT_DIR,
            max_to_keep=max(cfg.train.keep_checkpoints, cfg.train.average_last, 1),
        )
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model, step=self.step),
            self.output_dir / BEST_DIR,
            max_to_keep=1,
        )
        jit = cfg.train.jit_compile
        self._train_step = tf.function(
            self._replica_train_step, jit_compile=jit, reduce_retracing=True
        )
        self._eval_step = tf.function(
            self._replica_eval_step, jit_compile=jit, reduce_retracing=True
        )

    def _masked_loss(self, batch, training: bool):
        source, target_in, target_out = batch
        logits = self.model((source, target_in), training=training)  # [batch, time, vocab]
        mask = tf.cast(tf.not_equal(target_out, 0), tf.float32)  # [batch, time]
        tokens = tf.reduce_sum(mask)
        ctx = tf.distribute.get_replica_context()
        global_tokens = ctx.all_reduce("sum", tokens) if ctx else tokens
        per_token = sequence_loss(target_out, logits, self.config.train.label_smoothing) * mask
        loss = tf.nn.compute_average_loss(
            tf.reshape(per_token, [-1]), global_batch_size=tf.cast(tf.maximum(global_tokens, 1.0), tf.int64)
        )
        return loss, tokens

    def _replica_train_step(self, batch):
        with tf.GradientTape() as tape:
            loss, tokens = self._masked_loss(batch, training=True)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return loss, tokens

    def _replica_eval_step(self, batch):
        return self._masked_loss(batch, training=False)

    def _run(self, fn, batch) -> tuple[float, float]:
        loss, tokens = self.strategy.run(fn, args=(batch,))
        loss = self.strategy.reduce("sum", loss, axis=None)
        tokens = self.strategy.reduce("sum", tokens, axis=None)
        return float(loss), float(tokens)

    # -- loop --------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Trains until `train.max_steps` or `train.epochs`, resuming from the last checkpoint."""
        cfg = self.config.train
        self._prepare_output_dir()
        # Seed first: seeding clears TensorFlow's kernel cache, which would drop the
        # SentencePiece resources of tokenizers created before it.
        keras.utils.set_random_seed(cfg.seed)
        tokenizers, encoded, valid = self._load_data()
        self._build(tokenizers)
        restored = self.manager.restore_or_initialize()
        if restored:
            log.info(
                "resumed from %s at step %d (epoch %d, batch %d)",
                restored,
                int(self.step),
                int(self.epoch) + 1,
                int(self.batch_in_epoch),
            )
        valid_encoded = (
            encode_corpus(tokenizers, valid.sources, valid.targets, self.config.data.max_length)
            if valid is not None
            else None
        )
        from translator.api import Translator  # late import: api imports this module's users

        translator = Translator(self.model, tokenizers, self.config)
        history = self._read_history()
        writer = tf.summary.create_file_writer(str(self.output_dir / "logs"))
        start, tokens_seen, stopped_early = time.perf_counter(), 0.0, False
        total_steps = cfg.max_steps or None
        bar = tqdm(
            total=total_steps,
            initial=int(self.step),
            unit="step",
            file=sys.stderr,
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=1.0,
        )
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
                for batch in self.strategy.experimental_distribute_dataset(ds):
                    loss, tokens = self._run(self._train_step, batch)
                    if not math.isfinite(loss):
                        raise TrainingError(
                            f"loss became {loss} at step {int(self.step) + 1}; stopped without "
                            f"saving. Last good checkpoint: {self.manager.latest_checkpoint}. "
                            "Lower train.learning_rate or train.clip_norm and rerun"
                        )
                    self.step.assign_add(1)
                    self.batch_in_epoch.assign_add(1)
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
                        self.manager.save(checkpoint_number=step)
                    if cfg.max_steps and step >= cfg.max_steps:
                        break
                else:  # the epoch ran out of batches
                    self.epoch.assign_add(1)
                    self.batch_in_epoch.assign(0)
                    record = self._end_of_epoch(
                        epoch, epoch_loss, epoch_tokens, translator, valid, valid_encoded, writer
                    )
                    history.append(record)
                    self._write_history(history)
                    if (
                        cfg.early_stopping_patience
                        and int(self.bad_epochs) >= cfg.early_stopping_patience
                    ):
                        log.info("early stopping: no BLEU gain for %d epochs", int(self.bad_epochs))
                        stopped_early = True
                        self.manager.save(checkpoint_number=int(self.step))
                        break
                self.manager.save(checkpoint_number=int(self.step))
        finally:
            bar.close()
            writer.flush()
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
                self.best_manager.save(checkpoint_number=int(self.step))
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
        for batch in self.strategy.experimental_distribute_dataset(ds):
            loss, tokens = self._run(self._eval_step, batch)
            total += loss * tokens
            count += tokens
        return total / max(count, 1.0)

    def _read_history(self) -> list[dict]:
        path = self.output_dir / HISTORY_FILE
        if not path.is_file():
            return []
        done = int(self.epoch)
        return [r for r in json.loads(path.read_text()) if r["epoch"] <= done]

    def _write_history(self, history: list[dict]) -> None:
        path = self.output_dir / HISTORY_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(history, indent=1))
        tmp.replace(path)


def train(config: Config, progress: bool = True) -> TrainResult:
    """Trains a model as described by `config` (see Trainer); returns the run's summary."""
    result = Trainer(config, progress=progress).fit()
    summary = {k: v for k, v in result.__dict__.items() if k != "history"}
    log.info("training done: %s", summary)
    return result
