"""What a run reports as it goes: the progress bar, TensorBoard scalars, one line per epoch,
and history.json (one record per epoch, kept across resumed runs).

Only the chief writes files; the other workers keep their records in memory.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import tensorflow as tf
from tqdm import tqdm

from translator.config import TrainConfig
from translator.errors import TrainingError
from translator.model_dir import HISTORY_FILE, LOGS_DIR

if TYPE_CHECKING:
    from translator.training.state import TrainState

log = logging.getLogger(__name__)


def read_history(output_dir: Path, epochs_done: int) -> list[dict]:
    """The records of history.json up to epoch `epochs_done` (later ones belong to a run that
    was not checkpointed at its end); [] when there is none."""
    path = output_dir / HISTORY_FILE
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text()) if r["epoch"] <= epochs_done]


def write_history(output_dir: Path, history: list[dict]) -> None:
    """Replaces history.json atomically (a killed write leaves the previous file).

    Raises:
        TrainingError: the file cannot be written.
    """
    path = output_dir / HISTORY_FILE
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(history, indent=1))
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TrainingError(f"cannot write {path}: {exc.strerror}") from None


class Recorder:
    """The progress bar, TensorBoard, the end-of-epoch line and the history of one run.

    Attributes:
        history: the epoch records, earlier runs' included (on the chief).
    """

    def __init__(
        self,
        output_dir: Path,
        is_chief: bool,
        progress: bool,
        config: TrainConfig,
        state: TrainState,
    ):
        """Starts reporting a run whose (restored) `state` is where it starts from."""
        self.output_dir, self.is_chief, self.log_every = output_dir, is_chief, config.log_every
        self.history = read_history(output_dir, int(state.epoch)) if is_chief else []
        if is_chief:
            self.writer = tf.summary.create_file_writer(str(output_dir / LOGS_DIR))
        else:
            self.writer = tf.summary.create_noop_writer()
        self.bar = tqdm(
            total=config.max_steps or None,
            initial=int(state.step),
            unit="step",
            file=sys.stderr,
            disable=not (progress and is_chief),
            dynamic_ncols=True,
            mininterval=1.0,
        )

    def step(
        self,
        step: int,
        epoch: int,
        loss: float,
        tokens_per_second: float,
        learning_rate: Callable[[], float],
    ) -> None:
        """After each step: advances the bar; every `log_every` steps, the bar's figures and
        the TensorBoard scalars (`learning_rate` is only called then)."""
        self.bar.update(1)
        if step % self.log_every:
            return
        self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}", tok_s=f"{tokens_per_second:.0f}")
        with self.writer.as_default(step=step):
            tf.summary.scalar("train/loss", loss)
            tf.summary.scalar("train/tokens_per_second", tokens_per_second)
            tf.summary.scalar("train/learning_rate", learning_rate())

    def epoch_summary(self, record: dict) -> None:
        """The figures of an epoch's end (`record`: epoch, step, losses, scores) as TensorBoard
        scalars and one line: a log record, or on stderr when INFO logging is off (a notebook
        that set up no logging)."""
        with self.writer.as_default(step=record["step"]):
            for key, value in record.items():
                if key not in ("epoch", "step"):
                    tf.summary.scalar(f"epoch/{key}", value)
        figures = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
        if log.isEnabledFor(logging.INFO):
            log.info("epoch %d: %s", record["epoch"], figures)
        else:
            tqdm.write(f"epoch {record['epoch']}: {figures}", file=sys.stderr)

    def append(self, record: dict) -> None:
        """Adds an epoch's full record to the history and, on the chief, to history.json."""
        self.history.append(record)
        if self.is_chief:
            write_history(self.output_dir, self.history)

    def close(self) -> None:
        self.bar.close()
        self.writer.flush()
