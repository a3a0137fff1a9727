"""Trainer: the pipeline learns, resumes exactly, and refuses to go on with a NaN loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import synthetic
import tensorflow as tf
from conftest import tiny_config

from translator.api import Translator
from translator.errors import TrainingError
from translator.train import train


def test_pipeline_learns_the_synthetic_task(trained_dir, synthetic_files):
    """Held-out sentences (never seen in training) are translated exactly, reordering included."""
    sources = synthetic_files["test.src"].read_text().splitlines()
    references = synthetic_files["test.tgt"].read_text().splitlines()
    hyps = Translator.load(trained_dir).translate(sources)
    exact = np.mean([h == r for h, r in zip(hyps, references, strict=True)])
    assert exact >= 0.9, f"exact match {exact:.2f}"
    assert all(r == synthetic.translate(s) for s, r in zip(sources, references, strict=True))


def test_model_dir_is_self_contained(trained_dir):
    names = {p.name for p in trained_dir.iterdir()}
    assert {
        "config.yaml",
        "spm.source.model",
        "spm.target.model",
        "checkpoints",
        "best",
        "logs",
        "history.json",
    } <= names
    history = json.loads((trained_dir / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    assert {"train_loss", "valid_loss", "valid_bleu", "valid_chrf"} <= set(history[-1])
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]


def _weights(output_dir):
    return [v.numpy() for v in Translator.load(output_dir, checkpoint="latest").model.weights]


def test_resume_continues_from_the_last_checkpoint(synthetic_files, tmp_path):
    resumed = tmp_path / "resumed"
    first = train(tiny_config(synthetic_files, resumed, ("train.max_steps=20",)), progress=False)
    assert first.steps == 20
    after_20 = _weights(resumed)
    second = train(tiny_config(synthetic_files, resumed, ("train.max_steps=40",)), progress=False)
    assert second.steps == 40  # continued, not restarted from zero
    assert tf.train.latest_checkpoint(str(resumed / "checkpoints")).endswith("ckpt-40")

    straight = tmp_path / "straight"
    train(tiny_config(synthetic_files, straight, ("train.max_steps=40",)), progress=False)
    for a, b in zip(_weights(resumed), _weights(straight), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # same as uninterrupted
    assert any(not np.allclose(a, c) for a, c in zip(_weights(resumed), after_20, strict=True))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_files, tmp_path):
    out = tmp_path / "nan"
    train(tiny_config(synthetic_files, out, ("train.max_steps=20",)), progress=False)
    good = _weights(out)
    config = tiny_config(
        synthetic_files,
        out,
        ("train.max_steps=60", "train.learning_rate=1e30", "train.clip_norm=0"),
    )
    with pytest.raises(TrainingError, match=r"loss became (nan|inf)"):
        train(config, progress=False)
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-20")
    for a, b in zip(_weights(out), good, strict=True):
        np.testing.assert_array_equal(a, b)
