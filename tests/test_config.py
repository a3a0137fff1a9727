"""Tests for translator.config: YAML loading, validation, --set overrides and round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from translator.config import Config, config_from_dict, dump_config, load_config
from translator.errors import ConfigError

RECIPE = """\
data:
  tfds: multi30k/de-en
  manual_dir: /corpora/multi30k
  train:
    source: train.de
    target: train.en
tokenizer:
  vocab_size: 500
model:
  embedding_dim: 32
  units: 16
train:
  batch_size: 8
  max_steps: 20
  learning_rate: 1  # an int where a float is expected widens
  warmup_steps: 10
decode:
  length_penalty: 1e-1  # YAML 1.2 float without a dot
output_dir: runs/tiny
"""


def write_yaml(tmp_path, text: str, name: str = "config.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_from_yaml(tmp_path):
    config = load_config(write_yaml(tmp_path, RECIPE))
    assert config.data.tfds == "multi30k/de-en"
    assert config.data.manual_dir == "/corpora/multi30k"
    assert (config.data.train.source, config.data.train.target) == ("train.de", "train.en")
    assert config.data.valid.source is None and config.data.valid.target is None
    assert config.tokenizer.vocab_size == 500
    assert (config.model.embedding_dim, config.model.units) == (32, 16)
    assert (config.train.batch_size, config.train.max_steps) == (8, 20)
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.decode.length_penalty == pytest.approx(0.1)
    assert config.train.epochs == Config().train.epochs  # untouched keys keep their defaults
    assert config.output_dir == "runs/tiny"


def test_fixed_keys_exist_in_defaults():
    config = load_config()
    for dotted in (
        "data.train.source",
        "data.train.target",
        "data.valid.source",
        "data.valid.target",
        "data.tfds",
        "data.manual_dir",
        "tokenizer.vocab_size",
        "model.embedding_dim",
        "model.units",
        "train.batch_size",
        "train.max_steps",
        "train.epochs",
        "output_dir",
    ):
        node = config
        for part in dotted.split("."):
            assert hasattr(node, part), dotted
            node = getattr(node, part)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("lerning_rate: 0.1\n", "lerning_rate"),
        ("model:\n  unitz: 4\n", "model.unitz"),
        ("data:\n  train:\n    sauce: a.de\n", "data.train.sauce"),
    ],
)
def test_unknown_key_names_dotted_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}'"):
        load_config(write_yaml(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("train:\n  batch_size: lots\n", "train.batch_size", "'lots'"),
        ("train:\n  batch_size: 2.5\n", "train.batch_size", "2.5"),
        ("model:\n  bridge: 3\n", "model.bridge", "3"),
        ("data:\n  train: [a, b]\n", "data.train", r"\['a', 'b'\]"),
        ("model:\n  attentional_dim: 256\n", "model.attentional_dim", "256 with attention 'none'"),
        ("model:\n  attention: luong\n  attentional_dim: -1\n", "model.attentional_dim", "-1"),
    ],
)
def test_wrong_type_names_key_and_value(tmp_path, text, key, value):
    with pytest.raises(ConfigError, match=rf"'{key}'.*{value}"):
        load_config(write_yaml(tmp_path, text))


def test_set_overrides_scalars_and_nested_paths(tmp_path):
    config = load_config(
        write_yaml(tmp_path, RECIPE),
        overrides=[
            "train.batch_size=32",
            "train.learning_rate=5e-4",
            "train.mixed_precision=true",
            "model.attention=luong",
            "data.tfds=null",
            "data.valid.source=dev.de",
            "data.valid.target=dev.en",
            "output_dir=runs/other",
        ],
    )
    assert config.train.batch_size == 32
    assert config.train.learning_rate == pytest.approx(5e-4)
    assert config.train.mixed_precision is True
    assert config.model.attention == "luong"
    assert config.data.tfds is None
    assert (config.data.valid.source, config.data.valid.target) == ("dev.de", "dev.en")
    assert config.data.train.source == "train.de"  # siblings of an overridden key survive
    assert config.output_dir == "runs/other"


def test_set_override_unknown_or_mistyped_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.unitz'"):
        config_from_dict({}, ["model.unitz=4"])
    with pytest.raises(ConfigError, match=r"'train.epochs'.*'ten'"):
        config_from_dict({}, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        config_from_dict({}, ["train.epochs"])


def test_dump_and_load_round_trip(tmp_path):
    original = load_config(
        write_yaml(tmp_path, RECIPE), overrides=["data.valid.source=v.tsv", "decode.beam_size=4"]
    )
    path = tmp_path / "dumped.yaml"
    dump_config(original, path)
    restored = load_config(path)
    assert restored == original
    assert restored != load_config()  # the comparison is not vacuous


def test_dropout_table_round_trips_and_bad_tables_name_the_key(tmp_path):
    table = "train.dropout_by_epochs=[[12, 0.3], [25, 0.4]]"
    original = load_config(write_yaml(tmp_path, RECIPE), overrides=[table])
    assert original.train.dropout_by_epochs == ((12.0, 0.3), (25.0, 0.4))
    dump_config(original, tmp_path / "dumped.yaml")
    assert load_config(tmp_path / "dumped.yaml") == original
    for bad in ("[[12, 0.3], [10, 0.4]]", "[[12, 1.0]]", "[[0, 0.1]]", "[[12, 0.3, 1]]", "0.3"):
        with pytest.raises(ConfigError, match=r"'train.dropout_by_epochs'"):
            config_from_dict({}, [f"train.dropout_by_epochs={bad}"])


def test_invalid_yaml_names_file(tmp_path):
    path = write_yaml(tmp_path, "model:\n  units: [1, 2\n", name="broken.yaml")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(path)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*absent\.yaml"):
        load_config(tmp_path / "absent.yaml")


def test_cross_field_validation_names_key():
    with pytest.raises(ConfigError, match=r"'decode.n_best' \(3\) cannot exceed"):
        config_from_dict({"decode": {"n_best": 3, "beam_size": 2}})
    with pytest.raises(ConfigError, match=r"'model.attention': 'dot' is not one of"):
        config_from_dict({"model": {"attention": "dot"}})


RECIPES = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_load_and_validate(path):
    config = load_config(path)
    direction = f"{config.data.source_lang}_{config.data.target_lang}"
    assert path.stem.startswith(f"multi30k_{direction}")  # the file name says the direction
    assert config.output_dir == f"runs/{path.stem}"  # each recipe trains into its own run
