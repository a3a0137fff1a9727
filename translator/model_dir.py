"""The names inside a training output directory, and the lookups over them.

A model directory is self-contained:

    config.yaml                  the run's configuration (CONFIG_FILE)
    spm.source.model             SentencePiece models (SOURCE_SPM, TARGET_SPM; identical when the
    spm.target.model               vocabulary is joint)
    checkpoints/                 the latest training checkpoints (CHECKPOINT_DIR)
    best/                        the best validation BLEU checkpoint (BEST_DIR; under a time
                                 budget the last validated one: the annealed end)
    averaged/                    the average of the last checkpoints (AVERAGED_DIR)
    logs/                        TensorBoard event files (LOGS_DIR)
    history.json                 one record per epoch (HISTORY_FILE)

No TensorFlow is imported until a checkpoint is looked up.
"""

from __future__ import annotations

from pathlib import Path

from translator.config import load_config
from translator.constants import CHECKPOINT_CHOICES  # noqa: F401  (re-exported)
from translator.errors import ModelDirError

CONFIG_FILE = "config.yaml"
SOURCE_SPM = "spm.source.model"
TARGET_SPM = "spm.target.model"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
AVERAGED_DIR = "averaged"
LOGS_DIR = "logs"
HISTORY_FILE = "history.json"


def is_model_dir(directory: str | Path) -> bool:
    """Whether `directory` holds a training run's configuration."""
    return (Path(directory) / CONFIG_FILE).is_file()


def has_tokenizers(directory: str | Path) -> bool:
    """Whether both SentencePiece models are in `directory`."""
    directory = Path(directory)
    return all((directory / name).is_file() for name in (SOURCE_SPM, TARGET_SPM))


def find_checkpoint(directory: str | Path, checkpoint: str = "best") -> str:
    """The checkpoint path a trained model is restored from: "best" or "latest".

    "best" is the averaged checkpoint when the model was trained with `train.average_last`,
    else the best validation BLEU checkpoint, falling back to the latest.

    Raises:
        ModelDirError: the directory holds no checkpoint.
    """
    import tensorflow as tf  # noqa: PLC0415  (keeps this module free of TensorFlow at import)

    directory = Path(directory)
    path = None
    if checkpoint == "best":
        if is_model_dir(directory) and load_config(directory / CONFIG_FILE).train.average_last:
            path = tf.train.latest_checkpoint(str(directory / AVERAGED_DIR))
        path = path or tf.train.latest_checkpoint(str(directory / BEST_DIR))
    path = path or tf.train.latest_checkpoint(str(directory / CHECKPOINT_DIR))
    if path is None:
        raise ModelDirError(f"no checkpoint found in {directory}/{CHECKPOINT_DIR}")
    return path
