"""Checkpoint files: averaging, cleanup of interrupted saves, and which checkpoint is kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from translator import checkpoints
from translator.config import ModelConfig
from translator.model import build_model
from translator.train import train


def _tiny_model():
    return build_model(ModelConfig(embedding_dim=4, units=4), 12, 10)


def test_average_of_two_checkpoints_is_the_elementwise_mean(tmp_path):
    model = _tiny_model()
    rng = np.random.default_rng(0)
    values = []
    for name in ("a", "b"):
        values.append([rng.normal(size=w.shape).astype("float32") for w in model.weights])
        for weight, value in zip(model.weights, values[-1], strict=True):
            weight.assign(value)
        tf.train.Checkpoint(model=model).write(str(tmp_path / name))

    mean = checkpoints.average_weights(_tiny_model(), [str(tmp_path / "a"), str(tmp_path / "b")])
    for got, a, b in zip(mean, *values, strict=True):
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-6)
        assert got.dtype == np.float32

    path = checkpoints.write_averaged(
        _tiny_model(), [str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "averaged", 7
    )
    assert path.endswith("ckpt-7")
    restored = _tiny_model()
    tf.train.Checkpoint(model=restored).restore(path).expect_partial()
    for got, want in zip(restored.weights, mean, strict=True):
        np.testing.assert_array_equal(got.numpy(), want)


def test_average_needs_checkpoints():
    with pytest.raises(ValueError, match="no checkpoints"):
        checkpoints.average_weights(_tiny_model(), [])


def test_leftovers_of_interrupted_saves_are_removed(tmp_path):
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(v=tf.Variable(1.0)), str(tmp_path), max_to_keep=2
    )
    manager.save(checkpoint_number=1)
    manager.save(checkpoint_number=2)
    (tmp_path / "ckpt-3_temp").mkdir()  # killed while writing
    (tmp_path / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    (tmp_path / "ckpt-4.index").write_bytes(b"half")  # killed before the state file
    (tmp_path / "checkpoint.tmp1234").write_text("partial state")
    before = {p.name for p in tmp_path.iterdir()}

    removed = checkpoints.remove_unreferenced(tmp_path)

    assert sorted(removed) == ["checkpoint.tmp1234", "ckpt-3_temp", "ckpt-4.index"]
    assert {p.name for p in tmp_path.iterdir()} == before - set(removed)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
    assert checkpoints.remove_unreferenced(tmp_path / "missing") == []


def test_early_stopping_keeps_the_best_checkpoint(synthetic_files, tmp_path, monkeypatch):
    """best/ holds the epoch with the highest BLEU; patience 2 stops two epochs later."""
    bleu = iter([10.0, 30.0, 20.0, 25.0, 50.0, 60.0])
    monkeypatch.setattr(
        "translator.evaluate.score", lambda hyps, refs: {"bleu": next(bleu), "chrf": 0.0}
    )
    lines = {s: synthetic_files[f"train.{s}"].read_text().splitlines(True) for s in ("src", "tgt")}
    for side, text in lines.items():
        (tmp_path / f"small.{side}").write_text("".join(text[:120]))
    overrides = (
        "model.units=16",
        "model.embedding_dim=16",
        f"data.train.source={tmp_path / 'small.src'}",
        f"data.train.target={tmp_path / 'small.tgt'}",
        "train.max_steps=0",
        "train.epochs=6",
        "train.early_stopping_patience=2",
        "train.eval_bleu_sentences=2",
    )
    out = tmp_path / "run"
    result = train(tiny_config(synthetic_files, out, overrides), progress=False)

    history = json.loads((out / "history.json").read_text())
    assert result.stopped_early
    assert [r["valid_bleu"] for r in history] == [10.0, 30.0, 20.0, 25.0]
    best_step = history[1]["step"]
    assert tf.train.latest_checkpoint(str(out / "best")).endswith(f"ckpt-{best_step}")
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith(f"ckpt-{result.steps}")
    assert result.steps == history[-1]["step"] > best_step
