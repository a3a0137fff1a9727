"""Configuration: a YAML file loaded into frozen dataclasses, with `--set key.sub=value` overrides.

Every section is a frozen dataclass, so a config is a value: it can be compared, hashed, dumped
next to a trained model and loaded back unchanged. Unknown keys and wrong types are errors that
name the dotted key, because a typo in a recipe should never silently train the wrong model.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from translator.constants import ATTENTION_KINDS, CHECKPOINT_CHOICES, LSTM_KINDS, decoder_width
from translator.errors import ConfigError


@dataclass(frozen=True)
class SplitConfig:
    """Plain-file paths of one split: two aligned files, or one TSV file in `source`."""

    source: str | None = None
    target: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """Where the parallel corpus comes from: a TFDS name or plain files."""

    tfds: str | None = None  # e.g. "multi30k/de-en", "ted_hrlr_translate/pt_to_en"
    manual_dir: str | None = None  # local raw files for a TFDS builder (offline machines)
    data_dir: str | None = None  # TFDS data_dir; None = TFDS default
    source_lang: str = "de"
    target_lang: str = "en"
    train: SplitConfig = field(default_factory=SplitConfig)
    valid: SplitConfig = field(default_factory=SplitConfig)
    test: SplitConfig = field(default_factory=SplitConfig)
    train_split: str = "train"  # TFDS split names
    valid_split: str = "validation"
    test_split: str = "test"
    max_length: int = 100  # training pairs longer than this (in pieces, either side) are dropped
    # training corpora of at most this many pairs are tokenized once and held in memory; larger
    # ones stream from disk, tokenized every epoch (0: always stream)
    in_memory_pairs: int = 100_000


@dataclass(frozen=True)
class TokenizerConfig:
    """SentencePiece settings; special ids are fixed: pad 0, unk 1, bos 2, eos 3."""

    vocab_size: int = 8000
    joint: bool = False  # one shared model for both languages
    model_type: str = "unigram"  # unigram | bpe
    character_coverage: float = 1.0
    # pairs sampled (uniformly, in one streaming pass over the corpus) to train SentencePiece on
    max_sentences: int = 100_000


@dataclass(frozen=True)
class ModelConfig:
    """Encoder-decoder sizes. The decoder width is 2 * units (the concatenated context vector)
    unless a bridge maps the context vector to `decoder_units`."""

    embedding_dim: int = 256
    units: int = 256  # encoder LSTM units per direction
    encoder_layers: int = 1
    decoder_layers: int = 1
    bridge: bool = False  # dense tanh layer from the context vector to the decoder state
    decoder_units: int = 0  # 0 = 2 * units (required when bridge is false)
    dropout: float = 0.0  # on embeddings and between layers (never recurrent: keeps cuDNN)
    attention: str = "none"  # none | luong | bahdanau
    tie_embeddings: bool = False  # share target embedding matrix with the output projection
    # with attention: width of the attentional vector tanh(W [context; h]) that is fed to the
    # next step and projected to the vocabulary; 0 = the decoder's width
    attentional_dim: int = 0
    lstm: str = "auto"  # auto (fast on CPU, keras on GPU) | fast | keras: same weights


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpointing and speed switches."""

    batch_size: int = 64  # sentences per batch (global, across replicas)
    batch_tokens: int = 0  # > 0: batches hold about this many target tokens instead
    max_steps: int = 0  # 0 = no step limit (train for `epochs`)
    epochs: int = 10
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | inverse_sqrt | plateau
    clip_norm: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 1234
    shuffle_buffer: int = 50_000  # pairs shuffled at a time (a streamed corpus's memory bound)
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at each epoch end
    keep_checkpoints: int = 3
    log_every: int = 50
    eval_bleu_sentences: int = 0  # validation sentences decoded for BLEU each epoch; 0 = all
    early_stopping_patience: int = 0  # epochs without BLEU gain before stopping; 0 = off
    average_last: int = 0  # average the last N checkpoints into the final weights; 0 = off
    # regularisation for the planned length: ((epochs, dropout), ...) sorted by epochs; the
    # run's dropout is read off this line at its planned epochs (the time budget's first plan,
    # else epochs / max_steps), flat beyond its ends; empty = model.dropout
    dropout_by_epochs: tuple[tuple[float, float], ...] = ()
    strategy: str = "default"  # default | mirrored | multi_worker
    cluster_timeout: float = 300.0  # seconds a multi_worker task waits for the others
    # bfloat16 compute: auto = where native (GPU, amx_bf16/avx512_bf16 CPU); true/false force it
    mixed_precision: bool | str = "auto"
    # minutes for the whole `translator train` process; the trainer plans its updates and
    # anneals the learning rate to the end of the budget (0 = off: train for epochs/max_steps)
    time_budget: float = 0.0
    # the share of a budgeted run's updates after warm-up over which the rate decays (cosine,
    # to 1% at the planned end): 1 = from the end of warm-up; 0.3 = the peak is held for the
    # first 70% (a warm-up-stable-decay schedule)
    budget_decay: float = 1.0
    jit_compile: bool = False  # XLA for the train step (batches then padded to fixed shapes)
    packed_loss: bool = True  # vocabulary projection + softmax only at real (non-pad) tokens
    bucket_width: int = 8  # length buckets are multiples of this many pieces
    # fine-tuning: start from this trained model directory's weights and SentencePiece models
    # (the model and vocabulary keys must match; see training/init_from.py)
    init_from: str | None = None
    init_checkpoint: str = "best"  # best | latest: the init model's checkpoint to start from


@dataclass(frozen=True)
class DecodeConfig:
    """Default decoding options; every one can be overridden per call."""

    beam_size: int = 1  # 1 = greedy
    length_penalty: float = 0.6  # GNMT alpha; 0 = none
    n_best: int = 1
    max_length_ratio: float = 2.0  # output pieces <= ratio * source pieces + 10 ...
    max_length: int = 256  # ... and never more than this
    max_source_length: int = 256  # longer sources are chunked (split) or truncated (warning)
    # sentences per model call: greedy ran 1.2x faster at 128 than at 64 in float32 and in
    # bfloat16 (no faster at 256), beam 5 the same from 32 to 128 (AMX CPU, RESULTS.md)
    batch_size: int = 128
    # cut inputs into sentences, and sentences over max_source_length into chunks at word
    # boundaries, before translating; the translations are joined with spaces (splitting.py)
    split: bool = True


@dataclass(frozen=True)
class Config:
    """A whole experiment: data, tokenizer, model, training and decoding."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    output_dir: str = "runs/model"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats like `5e-4` (YAML 1.1 needs `5.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


_CHOICES = {
    "model.attention": ATTENTION_KINDS,
    "model.lstm": LSTM_KINDS,
    "tokenizer.model_type": ("unigram", "bpe"),
    "train.lr_schedule": ("constant", "inverse_sqrt", "plateau"),
    "train.strategy": ("default", "mirrored", "multi_worker"),
    "train.mixed_precision": ("auto", True, False),
    "train.init_checkpoint": CHECKPOINT_CHOICES,
}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Checks `value` against the annotation `hint`; returns it (ints widen to floats)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {_name(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], key) for v in value)
            if len(value) == len(args):
                return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
        raise ConfigError(f"config key '{key}': expected {_name(hint)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. `--set data.source_lang=1` stays usable
    raise ConfigError(f"config key '{key}': expected {_name(hint)}, got {value!r}")


def _name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:  # YAML lists: "a list of [float, float]"
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_name(args[0])}"
        return "[" + ", ".join(_name(a) for a in args) + "]"
    return getattr(hint, "__name__", str(hint).replace("NoneType", "null"))


def _build(cls: type, values: Any, prefix: str) -> Any:
    """Builds dataclass `cls` from a mapping, rejecting unknown keys by their dotted name."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(f"config section {where} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}' (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], dotted)
        if dotted in _CHOICES and kwargs[key] not in _CHOICES[dotted]:
            choices = " | ".join(str(c).lower() for c in _CHOICES[dotted])
            raise ConfigError(f"config key '{dotted}': {kwargs[key]!r} is not one of {choices}")
    return cls(**kwargs)


def _set_dotted(tree: dict, override: str) -> None:
    """Applies one `key.sub=value` override to a nested dict; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key.sub=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{override}' has an empty key part")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(values: dict | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Builds a Config from nested dicts plus `key.sub=value` overrides; validates everything."""
    tree = _deep_copy(values or {})
    for override in overrides:
        _set_dotted(tree, override)
    config = _build(Config, tree, "")
    _validate(config)
    return config


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Loads a YAML config file (or the defaults when `path` is None) and applies overrides.

    Args:
        path: YAML file with the sections data, tokenizer, model, train, decode and output_dir.
        overrides: strings like "train.batch_size=32"; values are parsed as YAML scalars.

    Raises:
        ConfigError: the file is missing or invalid, or a key is unknown or has the wrong type.
    """
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return config_from_dict(values, overrides)


def dump_config(config: Config, path: str | Path) -> None:
    """Writes `config` as YAML (atomically: a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def config_to_dict(config: Config) -> dict:
    """The config as plain nested dicts and lists (YAML/JSON-ready)."""
    return dataclasses.asdict(config, dict_factory=lambda items: {k: _lists(v) for k, v in items})


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, tuple) else value


def _deep_copy(tree: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


def _validate(config: Config) -> None:
    """Cross-field checks that a single type annotation cannot express."""
    positive = {
        "tokenizer.vocab_size": config.tokenizer.vocab_size,
        "model.embedding_dim": config.model.embedding_dim,
        "model.units": config.model.units,
        "model.encoder_layers": config.model.encoder_layers,
        "model.decoder_layers": config.model.decoder_layers,
        "train.batch_size": config.train.batch_size,
        "train.bucket_width": config.train.bucket_width,
        "train.cluster_timeout": config.train.cluster_timeout,
        "data.max_length": config.data.max_length,
        "tokenizer.max_sentences": config.tokenizer.max_sentences,
        "train.shuffle_buffer": config.train.shuffle_buffer,
        "decode.beam_size": config.decode.beam_size,
        "decode.n_best": config.decode.n_best,
        "decode.max_length": config.decode.max_length,
        "decode.max_source_length": config.decode.max_source_length,
        "decode.batch_size": config.decode.batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    non_negative = {
        "data.in_memory_pairs": config.data.in_memory_pairs,
        "train.max_steps": config.train.max_steps,
        "train.epochs": config.train.epochs,
        "train.batch_tokens": config.train.batch_tokens,
        "train.warmup_steps": config.train.warmup_steps,
        "train.time_budget": config.train.time_budget,
        "train.average_last": config.train.average_last,
        "train.early_stopping_patience": config.train.early_stopping_patience,
        "model.decoder_units": config.model.decoder_units,
        "decode.length_penalty": config.decode.length_penalty,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {value}")
    if config.tokenizer.vocab_size < 8:
        raise ConfigError("config key 'tokenizer.vocab_size' must be at least 8")
    if not 0.0 <= config.model.dropout < 1.0:
        raise ConfigError(
            f"config key 'model.dropout' must be in [0, 1), got {config.model.dropout}"
        )
    table = config.train.dropout_by_epochs
    if any(not (epochs > 0 and 0.0 <= rate < 1.0) for epochs, rate in table) or any(
        a[0] >= b[0] for a, b in itertools.pairwise(table)
    ):
        raise ConfigError(
            "config key 'train.dropout_by_epochs' must list [epochs, dropout] pairs with "
            f"increasing positive epochs and dropout in [0, 1), got {[list(p) for p in table]}"
        )
    if not 0.0 < config.train.budget_decay <= 1.0:
        raise ConfigError(
            f"config key 'train.budget_decay' must be in (0, 1], got {config.train.budget_decay}"
        )
    if not 0.0 <= config.train.label_smoothing < 1.0:
        raise ConfigError(
            "config key 'train.label_smoothing' must be in [0, 1), "
            f"got {config.train.label_smoothing}"
        )
    if config.decode.n_best > config.decode.beam_size:
        raise ConfigError(
            f"config key 'decode.n_best' ({config.decode.n_best}) cannot exceed "
            f"'decode.beam_size' ({config.decode.beam_size})"
        )
    try:
        decoder_width(config.model.units, config.model.decoder_units, config.model.bridge)
    except ValueError:
        raise ConfigError(
            "config key 'model.decoder_units' must equal 2 * model.units without a bridge "
            "(the context vector is the decoder's initial state); set model.bridge=true"
        ) from None
    if config.model.attentional_dim < 0 or (
        config.model.attentional_dim and config.model.attention == "none"
    ):
        raise ConfigError(
            "config key 'model.attentional_dim' must be 0, or > 0 with model.attention luong "
            f"or bahdanau, got {config.model.attentional_dim} with "
            f"attention {config.model.attention!r}"
        )
    train = config.train
    if train.max_steps == 0 and train.epochs == 0 and not train.time_budget:
        raise ConfigError("set 'train.time_budget', 'train.max_steps' or 'train.epochs' (all 0)")
