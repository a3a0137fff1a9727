"""Stopping on a signal: SIGINT/SIGTERM ask the loop to stop after the current step.

The loop saves a checkpoint, then raises `TrainingInterrupted` (the CLI exits with 128 + the
signal number: 130 for Ctrl-C, 143 for SIGTERM). Under several workers the flag travels with
the step's all-reduce (see losses.replica_loss), so every worker stops at the same step.
"""

from __future__ import annotations

import logging
import signal
import threading

import tensorflow as tf

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint.

    Attributes:
        exit_code: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum

    @classmethod
    def at_step(cls, signum: int | None, step: int, saved: str) -> TrainingInterrupted:
        """The error for a stop after `step`, the checkpoint `saved`; None: another worker's."""
        signum = signum or signal.SIGTERM  # None: another worker was signalled
        return cls(
            f"interrupted by {signal.Signals(signum).name} at step {step}; saved {saved}; "
            "run the same command again to resume",
            signum,
        )


class StopOnSignal:
    """Once installed, SIGINT/SIGTERM ask the loop to stop after the current step.

    A second signal raises KeyboardInterrupt at once (the last checkpoint stays as it was).
    Handlers can only be installed from the main thread; elsewhere signals keep their handlers.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> StopOnSignal:
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
        """This worker's stop flag for the next step: 1.0 once a signal arrived, else 0.0."""
        return tf.constant(0.0 if self.signum is None else 1.0)
