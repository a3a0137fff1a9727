"""Fine-tuning: a run that starts from another trained model (`train.init_from`).

The new run takes the trained model's weights (its best checkpoint, or `train.init_checkpoint:
latest`) and its SentencePiece models, byte for byte: the vocabulary is kept, the new corpus is
tokenized with it and no tokenizer is trained. Everything else is the new config's: the corpus,
the train settings, and a fresh optimizer, schedule and step counter (the run counts from step
0, its history and best checkpoint are its own).

Everything is checked before the run writes anything: the directory is a training directory
(an export is refused: it holds a SavedModel, not the checkpoints a run restores), it is not the
output directory, and the new config describes the same model (every `model` key but
FREE_MODEL_KEYS, and the tokenizer's VOCABULARY_KEYS). A rerun of an interrupted fine-tuning
resumes from its own latest checkpoint: the init model is only read when the output directory
has none.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from translator.config import Config, ModelConfig, load_config
from translator.constants import decoder_width
from translator.errors import ConfigError, ModelDirError
from translator.export.layout import resolve_export_dir
from translator.model import Seq2Seq
from translator.model_dir import CONFIG_FILE, find_checkpoint, has_tokenizers, is_model_dir
from translator.tokenizer import Tokenizers

log = logging.getLogger(__name__)

# `model` keys that may differ from the init model's: they change neither a variable's shape
# nor the architecture (dropout rates; the LSTM loop, whose weights are the same). Every other
# key of the section, present or future, must match.
FREE_MODEL_KEYS = ("dropout", "lstm")
# `tokenizer` keys that describe the vocabulary (the others only steer training a tokenizer,
# which a fine-tuning run does not do).
VOCABULARY_KEYS = ("vocab_size", "joint", "model_type")


@dataclass(frozen=True)
class InitModel:
    """What a fine-tuning run starts from."""

    directory: Path
    checkpoint: str  # the checkpoint path the weights are read from
    tokenizers: Tokenizers  # the init model's SentencePiece models, as its files hold them


def check_init_from(config: Config) -> InitModel | None:
    """The model `config.train.init_from` names, checked against `config`; None without one.

    Reads only: call it before the run writes anything.

    Raises:
        ConfigError: the directory is missing, is an export, is the output directory, holds a
            model of another shape or vocabulary (the message names the key and both values),
            or the output directory already holds other SentencePiece models.
        ModelDirError: the directory lacks its SentencePiece models or any checkpoint.
    """
    init_from = config.train.init_from
    if not init_from:
        return None
    directory = Path(init_from)
    where = f"train.init_from {directory}"
    if not directory.is_dir():
        raise ConfigError(f"{where}: directory not found")
    if resolve_export_dir(directory) is not None:
        raise ConfigError(
            f"{where} is an export (SavedModel); fine-tuning starts from a training directory "
            "(the output_dir its checkpoints are in)"
        )
    if not is_model_dir(directory):
        raise ConfigError(f"{where} is not a trained model directory (no {CONFIG_FILE})")
    if directory.resolve() == Path(config.output_dir).resolve():
        raise ConfigError(
            f"output_dir {config.output_dir} is the init_from directory: a fine-tuning run "
            "needs its own output_dir"
        )
    init_config = load_config(directory / CONFIG_FILE)
    check_same_model(init_config, config)
    tokenizers = Tokenizers.load(directory)
    _check_output_tokenizers(Path(config.output_dir), directory, tokenizers)
    checkpoint = find_checkpoint(directory, config.train.init_checkpoint)
    data, init_data = config.data, init_config.data
    if (data.source_lang, data.target_lang) != (init_data.source_lang, init_data.target_lang):
        log.warning(
            "%s was trained %s→%s and this run is %s→%s: its vocabulary is kept",
            where,
            init_data.source_lang,
            init_data.target_lang,
            data.source_lang,
            data.target_lang,
        )
    return InitModel(directory, checkpoint, tokenizers)


def check_same_model(init_config: Config, config: Config) -> None:
    """Refuses `config` unless its model has the variables of the model `init_config` trained.

    Raises:
        ConfigError: naming the first differing key with the init model's value and this one.
    """
    init_model, model = _shape_keys(init_config.model), _shape_keys(config.model)
    for key, value in model.items():
        if init_model[key] != value:
            raise _differs(f"model.{key}", init_model[key], value)
    for key in VOCABULARY_KEYS:
        before, now = getattr(init_config.tokenizer, key), getattr(config.tokenizer, key)
        if before != now:
            raise _differs(f"tokenizer.{key}", before, now)


def _shape_keys(model: ModelConfig) -> dict:
    """The model keys that fix the variables, `decoder_units` resolved (0 = 2 * units).

    `attentional_dim` is compared as written: 0 and the decoder's width give the same vector,
    but with tied embeddings only a set value adds the `pre_output` map."""
    keys = {k: v for k, v in dataclasses.asdict(model).items() if k not in FREE_MODEL_KEYS}
    keys["decoder_units"] = decoder_width(model.units, model.decoder_units, model.bridge)
    return keys


def _differs(key: str, before, now) -> ConfigError:
    return ConfigError(
        f"config key '{key}' is {now!r} but the train.init_from model has {before!r}: "
        "fine-tuning keeps the model's shape and vocabulary"
    )


def _check_output_tokenizers(output_dir: Path, init_dir: Path, tokenizers: Tokenizers) -> None:
    """An output directory that already holds SentencePiece models (a resumed fine-tuning)
    must hold the init model's."""
    if has_tokenizers(output_dir) and Tokenizers.load(output_dir) != tokenizers:
        raise ConfigError(
            f"output_dir {output_dir} holds other SentencePiece models than train.init_from "
            f"{init_dir}: use a new output_dir"
        )


def restore_weights(model: Seq2Seq, init: InitModel) -> None:
    """Sets every variable of `model` (built) from the init model's checkpoint.

    Raises:
        ModelDirError: the checkpoint cannot be read or lacks a variable of `model` (damaged,
            or written by a version of the package with other layer names).
    """
    try:
        status = tf.train.Checkpoint(model=model).read(init.checkpoint)
        status.assert_existing_objects_matched()
    except (AssertionError, IndexError, ValueError, tf.errors.OpError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelDirError(
            f"train.init_from checkpoint {init.checkpoint} does not fit the model: {reason}"
        ) from None
    log.info("fine-tuning from %s (fresh optimizer, schedule and step counter)", init.checkpoint)
