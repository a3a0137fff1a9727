"""A run's state: loop counters, the training checkpoint and its managers, restore, worker sync.

The checkpoint holds the model, the optimizer, the step, the epoch and how many batches of that
epoch were done, the early-stopping counters, the schedule's variables and the training time.
Each epoch's data order depends only on `seed + epoch`, so a resumed run skips exactly the
finished batches and ends with the step count of an uninterrupted run. The names given to
`tf.train.Checkpoint` below are the checkpoint format: renaming one breaks resuming old runs.

Checkpoint files themselves (saving with a clear error, leftovers of killed saves, averaging)
are handled by translator.checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

from translator import checkpoints
from translator.config import TrainConfig
from translator.distribute import check_same_everywhere, sync_from_chief
from translator.model import Seq2Seq
from translator.model_dir import AVERAGED_DIR, BEST_DIR, CHECKPOINT_DIR
from translator.training.init_from import InitModel, restore_weights
from translator.training.schedules import Schedule

log = logging.getLogger(__name__)


class TrainState:
    """The counters of the loop and everything a checkpoint saves and restores.

    Attributes:
        step, epoch, batch_in_epoch: where the run is (int64 variables).
        best_bleu, bad_epochs: the best validation BLEU so far, epochs since it improved.
        train_seconds: wall-clock seconds spent in training steps, over all resumed runs.
        manager: the latest checkpoints (in `work_dir`, see model_dir.CHECKPOINT_DIR).
        best_manager: the best-BLEU checkpoint (the model and the step; model_dir.BEST_DIR).
    """

    def __init__(
        self,
        model: Seq2Seq,
        optimizer: keras.optimizers.Optimizer,
        schedule: Schedule,
        work_dir: Path,
        config: TrainConfig,
        is_chief: bool,
    ):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        # Loop counters: plain variables (outside the strategy), read and set in Python only.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.batch_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch")
        self.best_bleu = tf.Variable(-1.0, dtype=tf.float32, trainable=False, name="best")
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")
        self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="seconds")
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            step=self.step,
            epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch,
            best_bleu=self.best_bleu,
            bad_epochs=self.bad_epochs,
            **schedule.checkpoint_variables(),
            train_seconds=self.train_seconds,
        )
        keep = max(config.keep_checkpoints, config.average_last, 1)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, work_dir / CHECKPOINT_DIR, max_to_keep=keep if is_chief else 1
        )
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model, step=self.step), work_dir / BEST_DIR, max_to_keep=1
        )

    def variables(self) -> list:
        """Every variable a worker takes from the chief, in one fixed order."""
        return [
            *self.model.variables,
            *self.optimizer.variables,
            self.step,
            self.epoch,
            self.batch_in_epoch,
            self.best_bleu,
            self.bad_epochs,
            *self.schedule.checkpoint_variables().values(),
            self.train_seconds,
        ]

    def restore(
        self,
        strategy: tf.distribute.Strategy,
        vocabulary: bytes,
        output_dir: Path | None,
        init: InitModel | None = None,
    ) -> None:
        """Restores the latest checkpoint on the chief and hands its state to every worker.

        Args:
            strategy: the run's strategy (the hand-over uses its collectives).
            vocabulary: the SentencePiece models; every worker must hold the same ones
                before taking the chief's weights (TrainingError otherwise).
            output_dir: on the chief, the output directory, whose checkpoint directories are
                first cleared of what killed saves left; None on the other workers.
            init: a fine-tuning run's init model: its weights are the chief's starting point
                when the run has no checkpoint of its own yet (a rerun resumes its own).
        """
        if output_dir is not None:
            for name in (CHECKPOINT_DIR, BEST_DIR, AVERAGED_DIR):
                checkpoints.remove_unreferenced(output_dir / name)
        restored = self.manager.restore_or_initialize()
        if init is not None and restored is None and output_dir is not None:
            restore_weights(self.model, init)
        check_same_everywhere(
            strategy, vocabulary, "the SentencePiece models (tokenizer section and training data)"
        )
        sync_from_chief(strategy, self.variables())
        if restored or int(self.step):
            log.info(
                "resumed from %s at step %d (epoch %d, batch %d)",
                restored or "the chief's checkpoint",
                int(self.step),
                int(self.epoch) + 1,
                int(self.batch_in_epoch),
            )

    def count_step(self, seconds: float) -> None:
        """Counts a finished training step that took `seconds`."""
        self.step.assign_add(1)
        self.batch_in_epoch.assign_add(1)
        self.train_seconds.assign_add(seconds)

    def next_epoch(self) -> None:
        """Counts a finished epoch: the next one starts at its first batch."""
        self.epoch.assign_add(1)
        self.batch_in_epoch.assign(0)

    @property
    def latest_checkpoint(self) -> str | None:
        return self.manager.latest_checkpoint

    def save(self) -> None:
        """Saves a checkpoint at the current step (once: a repeated call does nothing)."""
        checkpoints.save(self.manager, int(self.step))

    def save_best(self) -> None:
        """Saves the model as the best checkpoint at the current step."""
        checkpoints.save(self.best_manager, int(self.step))

    def write_average(self, n: int, model: Seq2Seq, directory: Path) -> None:
        """Writes the mean weights of the last `n` checkpoints to `directory`, through `model`
        (a copy of the architecture that is left holding the average)."""
        paths = self.manager.checkpoints[-n:]
        if len(paths) < n:
            log.warning("average_last=%d but only %d checkpoints exist", n, len(paths))
        checkpoints.write_averaged(model, paths, directory, int(self.step))
