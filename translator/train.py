"""Training, as users and scripts import it: `from translator.train import train`.

The code lives in the translator.training package, one concern per module; this module only
re-exports its public names.
"""

from __future__ import annotations

from translator.model_dir import BEST_DIR, CHECKPOINT_DIR, HISTORY_FILE
from translator.training.losses import sequence_loss, token_losses
from translator.training.schedules import LearningRate, Schedule, make_schedule
from translator.training.signals import TrainingInterrupted
from translator.training.trainer import Trainer, TrainResult, train

__all__ = [
    "BEST_DIR",
    "CHECKPOINT_DIR",
    "HISTORY_FILE",
    "LearningRate",
    "Schedule",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "make_schedule",
    "sequence_loss",
    "token_losses",
    "train",
]
