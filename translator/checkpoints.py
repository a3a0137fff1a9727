"""Checkpoint files: saves that fail in one clear line, leftovers of killed saves, averaging.

A TensorFlow checkpoint save writes its data under `<prefix>_temp/`, moves it into
`<prefix>.index` / `<prefix>.data-*`, and only then rewrites the `checkpoint` state file (by an
atomic rename). A process killed at any moment therefore leaves the state file naming complete
checkpoints only; what a killed or failed save leaves behind is unreferenced, and
`remove_unreferenced` deletes it before the next run writes there.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from translator.errors import TrainingError

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(?P<prefix>.+?)(?:\.index|\.data-\d+-of-\d+|_temp.*)$")


def save(manager: tf.train.CheckpointManager, step: int) -> str | None:
    """Saves checkpoint number `step` unless it is already the latest; returns its path.

    Raises:
        TrainingError: the directory is not writable or the disk is full. The earlier
            checkpoints are left as they were and the partial files are removed.
    """
    latest = manager.latest_checkpoint
    if latest and latest.endswith(f"-{step}"):
        return latest  # rewriting a referenced checkpoint in place could corrupt it
    try:
        return manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as exc:
        remove_unreferenced(manager.directory)
        kept = f"latest: {Path(latest).name}" if latest else "there are none yet"
        raise TrainingError(
            f"cannot write checkpoint {manager.directory}/ckpt-{step}: {_reason(exc)}; "
            f"the earlier checkpoints are intact ({kept}). Free space or fix permissions, "
            "then rerun the same command to resume"
        ) from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "no space left on device"
        return exc.strerror or str(exc)
    message = exc.message.splitlines()[0] if exc.message else type(exc).__name__
    if "No space left" in message:
        return "no space left on device"
    return message


def remove_unreferenced(directory: str | Path) -> list[str]:
    """Deletes checkpoint files and temporary folders that the state file does not reference.

    Returns the names removed. A directory without a state file keeps only what is not a
    checkpoint file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    state = tf.train.get_checkpoint_state(str(directory))
    kept = {Path(p).name for p in state.all_model_checkpoint_paths} if state else set()
    removed = []
    for path in directory.iterdir():
        match = _FILE.match(path.name)
        partial = "_temp" in path.name or path.name.startswith("checkpoint.tmp")
        if (match and match["prefix"] not in kept) or partial:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        log.info("removed leftovers of an interrupted save in %s: %s", directory, removed)
    return removed


def average_weights(model: keras.Model, paths: Sequence[str]) -> list[np.ndarray]:
    """The element-wise mean of `model.weights` over the checkpoints at `paths`.

    Each checkpoint is restored into `model` in turn (it is left holding the last one).
    Non-float weights are taken from the last checkpoint.
    """
    if not paths:
        raise ValueError("no checkpoints to average")
    sums: list[np.ndarray] | None = None
    for path in paths:
        tf.train.Checkpoint(model=model).restore(path).expect_partial()
        values = [np.asarray(w.numpy(), np.float64) for w in model.weights]
        sums = values if sums is None else [a + b for a, b in zip(sums, values, strict=True)]
    out = []
    for weight, total in zip(model.weights, sums, strict=True):
        dtype = np.dtype(weight.dtype)
        if np.issubdtype(dtype, np.floating):
            out.append((total / len(paths)).astype(dtype))
        else:
            out.append(np.asarray(weight.numpy()))
    return out


def write_averaged(
    model: keras.Model, paths: Sequence[str], directory: str | Path, step: int
) -> str:
    """Averages the checkpoints at `paths` into `model` and saves it as `directory/ckpt-<step>`.

    The checkpoint holds the model (and the step), like `best/`, so `Translator.load` can
    restore it the same way.
    """
    for weight, value in zip(model.weights, average_weights(model, paths), strict=True):
        weight.assign(value)
    step_var = tf.Variable(step, dtype=tf.int64, trainable=False)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, step=step_var), str(directory), max_to_keep=1
    )
    path = save(manager, step)
    log.info("averaged %d checkpoints (%s) into %s", len(paths), ", ".join(paths), path)
    return path
