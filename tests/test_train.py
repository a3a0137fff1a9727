"""Trainer: the pipeline learns, resumes exactly, and refuses to go on with a NaN loss."""

from __future__ import annotations

import json

import numpy as np
import synthetic
import tensorflow as tf
from conftest import tiny_config

from translator.api import Translator
from translator.train import sequence_loss, train


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
    seconds = [r["seconds"] for r in history]  # training time so far, at each epoch's end
    assert 0 < seconds[0] and seconds == sorted(set(seconds))
    assert all(r["tokens_per_second"] > 0 for r in history)


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
    seconds = [
        tf.train.load_checkpoint(str(resumed / "checkpoints" / f"ckpt-{step}")).get_tensor(
            "train_seconds/.ATTRIBUTES/VARIABLE_VALUE"
        )
        for step in (20, 40)
    ]
    assert 0 < seconds[0] < seconds[1]  # training time carries over into the resumed run

    straight = tmp_path / "straight"
    train(tiny_config(synthetic_files, straight, ("train.max_steps=40",)), progress=False)
    for a, b in zip(_weights(resumed), _weights(straight), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # same as uninterrupted
    assert any(not np.allclose(a, c) for a, c in zip(_weights(resumed), after_20, strict=True))


def test_dropout_table_trains_with_the_rate_of_the_planned_epochs(synthetic_files, tmp_path):
    """With train.dropout_by_epochs the run learns what a run given the table's rate (at its
    planned epochs) as model.dropout learns, not what the rate the model was built with gives."""
    steps = "train.max_steps=10"  # a sixth of an epoch of the synthetic task
    table = "train.dropout_by_epochs=[[0.1, 0.1], [1.1, 0.6]]"
    chosen = train(tiny_config(synthetic_files, tmp_path / "table", (steps, table)), False)
    assert 0.1 < chosen.dropout < 0.6
    direct = f"model.dropout={chosen.dropout!r}"
    train(tiny_config(synthetic_files, tmp_path / "direct", (steps, direct)), False)
    train(tiny_config(synthetic_files, tmp_path / "built", (steps, "model.dropout=0.6")), False)
    for a, b in zip(_weights(tmp_path / "table"), _weights(tmp_path / "direct"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    pairs = zip(_weights(tmp_path / "table"), _weights(tmp_path / "built"), strict=True)
    assert any(not np.allclose(a, c, rtol=1e-4, atol=1e-5) for a, c in pairs)


def test_label_smoothing_loss_on_a_hand_computed_case():
    """p = (1/2, 1/4, 1/4), label 0, eps = 0.3: q = (0.8, 0.1, 0.1), loss = 1.2 ln 2."""
    logits = tf.math.log(tf.constant([[[0.5, 0.25, 0.25]]]))  # [batch 1, time 1, vocab 3]
    labels = tf.constant([[0]])
    plain = sequence_loss(labels, logits).numpy()
    smoothed = sequence_loss(labels, logits, label_smoothing=0.3).numpy()
    assert plain.shape == smoothed.shape == (1, 1)
    np.testing.assert_allclose(plain, [[np.log(2)]], rtol=1e-6)
    np.testing.assert_allclose(smoothed, [[1.2 * np.log(2)]], rtol=1e-6)
