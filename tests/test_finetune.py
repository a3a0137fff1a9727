"""Fine-tuning (`train.init_from`, `translator train --init-from`): a trained model of the
synthetic task is fine-tuned on the shifted task (the nouns' translations permuted), starting
from its weights and keeping its SentencePiece models; what cannot be fine-tuned is refused
before anything is written."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import synthetic
import tensorflow as tf
from conftest import tiny_config

from translator.api import Translator
from translator.cli import main
from translator.config import dump_config
from translator.evaluate import score
from translator.model_dir import BEST_DIR, CHECKPOINT_DIR, SOURCE_SPM, TARGET_SPM
from translator.train import train

STEPS = 60  # fine-tuning updates (the tiny config's learning rate, 0.01)


@pytest.fixture(scope="module")
def shifted_files(tmp_path_factory) -> dict:
    """The shifted task: train (1,000 pairs), valid (100), test (200), disjoint."""
    root = tmp_path_factory.mktemp("shifted")
    train_pairs, rest = synthetic.split(1000, 300, seed=1, nouns=synthetic.SHIFTED_NOUNS)
    files = {}
    for name, pairs in (("train", train_pairs), ("valid", rest[:100]), ("test", rest[100:])):
        files[f"{name}.src"], files[f"{name}.tgt"] = root / f"{name}.src", root / f"{name}.tgt"
        synthetic.write_pairs(pairs, files[f"{name}.src"], files[f"{name}.tgt"])
    return files


def _config(shifted_files, out, *overrides):
    return tiny_config(shifted_files, out, (f"train.max_steps={STEPS}", *overrides))


@pytest.fixture(scope="module")
def finetuned(trained_dir, shifted_files, tmp_path_factory):
    """`trained_dir` fine-tuned for STEPS updates on the shifted task, through the CLI."""
    root = tmp_path_factory.mktemp("finetuned")
    dump_config(_config(shifted_files, root / "out"), root / "shifted.yaml")
    argv = ["train", str(root / "shifted.yaml"), "--init-from", str(trained_dir)]
    assert main([*argv, "--no-progress"]) == 0
    return root / "out"


def _scores(model_dir, files) -> dict:
    sources = files["test.src"].read_text().splitlines()
    references = files["test.tgt"].read_text().splitlines()
    hyps = Translator.load(model_dir).translate(sources)
    exact = float(np.mean([h == r for h, r in zip(hyps, references, strict=True)]))
    return {"bleu": score(hyps, references)["bleu"], "exact": round(exact, 3)}


def _weights(model_dir, checkpoint="latest") -> list[np.ndarray]:
    return [w.numpy() for w in Translator.load(model_dir, checkpoint=checkpoint).model.weights]


def test_finetuning_learns_the_shifted_task(
    finetuned, trained_dir, shifted_files, synthetic_files, tmp_path
):
    """Better on the shifted task than the init model, and than the same updates from nothing."""
    scratch = tmp_path / "scratch"
    train(_config(shifted_files, scratch), progress=False)
    scores = {
        "init": _scores(trained_dir, shifted_files),
        "scratch": _scores(scratch, shifted_files),
        "finetuned": _scores(finetuned, shifted_files),
        "finetuned_on_original": _scores(finetuned, synthetic_files),
    }
    print(f"\nshifted-task test set (200 sentences), {STEPS} updates: {scores}")
    init, scratch, tuned = scores["init"], scores["scratch"], scores["finetuned"]
    assert init["exact"] == 0.0  # every sentence has two nouns, all translated the old way
    assert tuned["exact"] >= 0.25, scores
    assert tuned["bleu"] >= init["bleu"] + 20, scores
    assert tuned["bleu"] >= scratch["bleu"] + 20, scores


def test_finetuned_dir_keeps_the_vocabulary_and_counts_from_zero(finetuned, trained_dir):
    for name in (SOURCE_SPM, TARGET_SPM):
        assert (finetuned / name).read_bytes() == (trained_dir / name).read_bytes()
    assert Translator.load(finetuned).config.train.init_from == str(trained_dir)
    latest = (finetuned / CHECKPOINT_DIR / "checkpoint").read_text()
    assert f"ckpt-{STEPS}" in latest  # its own step counter, from 0


@pytest.fixture(scope="module")
def older_best(trained_dir, tmp_path_factory):
    """A copy of `trained_dir` whose best checkpoint is an older one than its latest."""
    copy = tmp_path_factory.mktemp("older_best") / "model"
    shutil.copytree(trained_dir, copy)
    best, latest = copy / BEST_DIR, copy / CHECKPOINT_DIR
    oldest = Path(tf.train.get_checkpoint_state(str(latest)).all_model_checkpoint_paths[0]).name
    shutil.rmtree(best)
    best.mkdir()
    for path in latest.glob(f"{oldest}.*"):
        shutil.copy(path, best / path.name)
    (best / "checkpoint").write_text(
        f'model_checkpoint_path: "{oldest}"\nall_model_checkpoint_paths: "{oldest}"\n'
    )
    return copy


@pytest.mark.parametrize("checkpoint", ["best", "latest"])
def test_the_run_starts_from_the_init_models_weights(
    checkpoint, older_best, shifted_files, tmp_path
):
    """At learning rate 0 the weights do not move: the run's checkpoint holds its step-0
    weights, which are the chosen init checkpoint's (dropout and the LSTM loop may differ)."""
    other = {"best": "latest", "latest": "best"}[checkpoint]
    overrides = (
        f"train.init_from={older_best}",
        f"train.init_checkpoint={checkpoint}",
        "train.learning_rate=0",
        "train.max_steps=1",
        "model.dropout=0.2",
        "model.lstm=fast",
    )
    result = train(tiny_config(shifted_files, tmp_path / "out", overrides), progress=False)
    assert result.steps == 1
    start, init = _weights(tmp_path / "out"), _weights(older_best, checkpoint)
    for a, b in zip(start, init, strict=True):
        np.testing.assert_array_equal(a, b)
    other_weights = _weights(older_best, other)  # and not the other one's
    assert any(not np.array_equal(a, b) for a, b in zip(start, other_weights, strict=True))


def test_a_rerun_resumes_the_finetuning_not_the_init_model(
    finetuned, trained_dir, shifted_files, tmp_path, caplog
):
    out = tmp_path / "out"
    init = f"train.init_from={trained_dir}"
    with caplog.at_level(logging.INFO):
        first = train(_config(shifted_files, out, init, "train.max_steps=20"), progress=False)
    assert first.steps == 20
    assert "fine-tuning from" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = train(_config(shifted_files, out, init), progress=False)
    assert second.steps == STEPS
    assert f"resumed from {out / CHECKPOINT_DIR}/ckpt-20" in caplog.text
    assert "fine-tuning from" not in caplog.text
    for a, b in zip(_weights(out), _weights(finetuned), strict=True):  # as if uninterrupted
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.units=32", "config key 'model.units' is 32 but the train.init_from model has 64"),
        (
            "model.attention=luong",
            "config key 'model.attention' is 'luong' but the train.init_from model has 'none'",
        ),
        ("model.decoder_layers=2", "'model.decoder_layers' is 2 but the train.init_from model has"),
        (
            "tokenizer.vocab_size=100",
            "'tokenizer.vocab_size' is 100 but the train.init_from model has 200",
        ),
    ],
)
def test_a_model_of_another_shape_is_refused_before_anything_is_written(
    override, message, trained_dir, shifted_files, tmp_path, capsys
):
    out = tmp_path / "out"
    dump_config(_config(shifted_files, out, override), tmp_path / "c.yaml")
    assert main(["train", str(tmp_path / "c.yaml"), "--init-from", str(trained_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_what_cannot_be_fine_tuned_from_is_refused(trained_dir, shifted_files, tmp_path, capsys):
    copy = tmp_path / "copy"  # refusing its own output dir must not touch the shared model
    shutil.copytree(trained_dir, copy)
    export = tmp_path / "export"
    (export / "1").mkdir(parents=True)
    (export / "1" / "saved_model.pb").write_bytes(b"")
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    other_vocabulary = tmp_path / "other"
    other_vocabulary.mkdir()
    for name in (SOURCE_SPM, TARGET_SPM):
        (other_vocabulary / name).write_bytes(b"another model")
    cases = [
        (copy, copy, "is the init_from directory: a fine-tuning run needs its own output_dir"),
        (export, tmp_path / "a", f"train.init_from {export} is an export (SavedModel)"),
        (not_a_model, tmp_path / "b", "is not a trained model directory (no config.yaml)"),
        (tmp_path / "missing", tmp_path / "c", "directory not found"),
        (trained_dir, other_vocabulary, "holds other SentencePiece models than"),
    ]
    for init, out, message in cases:
        dump_config(_config(shifted_files, out), tmp_path / "c.yaml")
        before = sorted(p.name for p in out.iterdir()) if out.exists() else None
        assert main(["train", str(tmp_path / "c.yaml"), "--init-from", str(init)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
        assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before


def test_a_damaged_init_checkpoint_is_one_clear_error(trained_dir, shifted_files, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(trained_dir, damaged)
    for data in (damaged / BEST_DIR).glob("*.data-*"):
        data.write_bytes(b"not a checkpoint")
    dump_config(_config(shifted_files, tmp_path / "out"), tmp_path / "c.yaml")
    assert main(["train", str(tmp_path / "c.yaml"), "--init-from", str(damaged)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: train.init_from checkpoint {damaged / BEST_DIR}/ckpt-"), err
    assert "does not fit the model" in err and "\n" not in err
