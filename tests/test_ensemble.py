"""Ensembles: the mean of the members' log-probabilities, the checks on members, export, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf
import yaml
from test_serving import SETTINGS, running

from translator.api import Translator
from translator.cli import main
from translator.constants import BOS_ID, EOS_ID
from translator.ensemble import Ensemble
from translator.errors import EnsembleError, ModelDirError
from translator.export import ExportedTranslator, export_model
from translator.introspect import attention_map
from translator.serving import create_app


@pytest.fixture(scope="module")
def sentences(synthetic_files) -> list[str]:
    return synthetic_files["test.src"].read_text().splitlines()[:12] + [""]


@pytest.fixture(scope="module")
def plain(trained_dir) -> Translator:
    return Translator.load(trained_dir)


@pytest.fixture(scope="module")
def attentive(attention_dir) -> Translator:
    return Translator.load(attention_dir)


@pytest.fixture(scope="module")
def pair(trained_dir, attention_dir) -> Translator:
    """Two different architectures (no attention, Luong attention) with one vocabulary."""
    return Translator.load([trained_dir, attention_dir])


def _ids(model: bytes, text: str) -> list[int]:
    # Python SentencePiece, not the in-graph tokenizer: training a fixture model in this process
    # (tf.random.set_seed) drops the TensorFlow SentencePiece resources of earlier translators.
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model)
    return processor.EncodeAsIds(text.strip())


def forced_step_log_probs(model, tokenizers, source: str, target: str) -> np.ndarray:
    """log p(target piece t | source, pieces before t) at each step, EOS last: `[tgt + 1]`."""
    source_ids = tf.constant([_ids(tokenizers.source_model, source) + [EOS_ID]])  # [1, src]
    target_ids = _ids(tokenizers.target_model, target) + [EOS_ID]
    state, previous, steps = model.encode(source_ids), BOS_ID, []
    for token in target_ids:
        log_probs, state = model.decode_step(tf.constant([previous]), state)
        steps.append(float(log_probs[0, token]))
        previous = token
    return np.array(steps)


def test_an_ensemble_of_a_model_with_itself_translates_as_the_model(trained_dir, sentences):
    twice = Translator.load([trained_dir, trained_dir])
    assert isinstance(twice.model, Ensemble) and twice.model_dirs == (trained_dir, trained_dir)
    full = Translator.load(trained_dir)
    full.lean = False  # an ensemble searches in full (log-softmax, every row): compare alike
    for options in ({"beam_size": 1}, {"beam_size": 4, "n_best": 2, "length_penalty": 0.6}):
        alone = full.translate(sentences, return_scores=True, **options)
        both = twice.translate(sentences, return_scores=True, **options)
        assert [[h.text for h in row] for row in both] == [[h.text for h in row] for row in alone]
        np.testing.assert_allclose(
            [h.log_prob for row in both for h in row],
            [h.log_prob for row in alone for h in row],
            rtol=1e-6,
        )


def test_each_step_scores_the_mean_of_the_members(pair, plain, attentive, sentences):
    members = (plain, attentive)
    greedy = pair.translate(sentences[:4], beam_size=1, return_scores=True)
    differ = False
    for source, (hyp,) in zip(sentences, greedy, strict=False):
        steps = [forced_step_log_probs(m.model, m.tokenizers, source, hyp.text) for m in members]
        ensemble = forced_step_log_probs(pair.model, pair.tokenizers, source, hyp.text)
        np.testing.assert_allclose(ensemble, np.mean(steps, axis=0), rtol=1e-5, atol=1e-6)
        # The decoder's own score of its translation is that sum.
        np.testing.assert_allclose(hyp.log_prob, ensemble.sum(), rtol=1e-5, atol=1e-5)
        differ |= not np.allclose(steps[0], steps[1], atol=1e-3)
    assert differ  # the members disagree, so the mean is not any one of them
    # Beam search ranks by the same mean: its best is at least as probable under it as greedy's.
    beam = pair.translate(sentences[:4], beam_size=4, return_scores=True)
    assert all(b[0].log_prob >= g[0].log_prob - 1e-5 for b, g in zip(beam, greedy, strict=True))


def test_ensemble_attention_is_the_mean_of_its_attention_members(pair, attentive, sentences):
    assert pair.model.attention == "luong"
    text = sentences[0]
    translation = pair.translate([text], beam_size=1)[0]
    ensemble = attention_map(pair, text, translation)
    member = attention_map(attentive, text, translation)
    # One member has attention: the mean over the members with attention is its weights.
    np.testing.assert_allclose(ensemble.weights, member.weights, atol=1e-6)
    assert ensemble.translation == translation


def _copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("logs", "checkpoints"))
    return target


def test_members_must_share_tokenizers_and_limits(trained_dir, attention_dir, tmp_path, capsys):
    other = _copy_model(trained_dir, tmp_path / "other")
    (other / "spm.target.model").write_bytes((other / "spm.source.model").read_bytes())
    with pytest.raises(EnsembleError) as info:
        Translator.load([trained_dir, other])
    message = str(info.value)
    assert f"member 2 ({other})" in message
    assert "different target SentencePiece model (spm.target.model)" in message
    assert f"member 1 ({trained_dir})" in message

    longer = _copy_model(attention_dir, tmp_path / "longer")
    config = yaml.safe_load((longer / "config.yaml").read_text())
    config["decode"]["max_length"] = 99
    (longer / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(EnsembleError, match=r"member 3 .* decode.max_length 99, member 1 .* 64"):
        Translator.load([trained_dir, attention_dir, longer])

    # The CLI says it in one line, exit status 2, before translating anything.
    code = main(["translate", "--model", str(trained_dir), "--model", str(other)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("error: ensemble member 2") and "spm.target.model" in err


def test_an_export_is_not_an_ensemble_member(trained_dir, tiny_export):
    with pytest.raises(ModelDirError, match="is an export: an ensemble is built from training"):
        Translator.load([trained_dir, tiny_export])


def test_export_round_trip_equals_the_in_process_ensemble(
    trained_dir, attention_dir, pair, sentences, tmp_path
):
    # export_model's parity gate already compares a fresh process's outputs with `pair`'s.
    version_dir = export_model(
        [trained_dir, attention_dir], tmp_path / "ens", parity_sentences=8, precision="float32"
    )
    loaded = Translator.load(version_dir)
    assert isinstance(loaded, ExportedTranslator)
    for options in ({"beam_size": 1}, {"beam_size": 5, "n_best": 3}):
        want = pair.translate(sentences, return_scores=True, **options)
        got = loaded.translate(sentences, return_scores=True, **options)
        assert [[h.text for h in r] for r in got] == [[h.text for h in r] for r in want]
        np.testing.assert_allclose(
            [h.score for r in got for h in r], [h.score for r in want for h in r], atol=1e-5
        )
    members = json.loads(loaded.info["members"])
    assert [m["model_dir"] for m in members] == [str(trained_dir), str(attention_dir)]
    assert [m["model"]["attention"] for m in members] == ["none", "luong"]
    assert all(m["training_steps"] > 0 for m in members) and loaded.info["training_steps"] == -1
    readable = json.loads((version_dir / "assets" / "export.json").read_text())
    assert readable["members"] == members

    # Served: /v1/translate and the attention heatmap (the mean of the attention members').
    with running(create_app(tmp_path / "ens", SETTINGS)) as client:
        response = client.post("/v1/translate", json={"text": sentences[:4], "beam_size": 1})
        assert response.status_code == 200, response.text
        served = [t["text"] for t in response.json()["translations"]]
        assert served == pair.translate(sentences[:4], beam_size=1)
        response = client.post("/v1/attention", json={"text": sentences[0]})
        assert response.status_code == 200, response.text
        weights = np.asarray(response.json()["weights"])
        want = attention_map(pair, sentences[0], beam_size=1).weights
        np.testing.assert_allclose(weights, want, atol=1e-5)


def test_cli_translate_and_evaluate_with_two_models(
    trained_dir, attention_dir, pair, synthetic_files, tmp_path, capsys
):
    source = tmp_path / "in.txt"
    lines = synthetic_files["test.src"].read_text().splitlines()[:5]
    source.write_text("\n".join(lines) + "\n")
    models = ["--model", str(trained_dir), "--model", str(attention_dir)]
    output = tmp_path / "out.txt"
    args = ["translate", *models, "--input", str(source), "--output", str(output)]
    assert main([*args, "--beam-size", "3"]) == 0
    assert output.read_text().splitlines() == pair.translate(lines, beam_size=3)

    target = tmp_path / "ref.txt"
    target.write_text(synthetic_files["test.tgt"].read_text().splitlines()[0] + "\n")
    capsys.readouterr()
    args = ["evaluate", *models, "--source", str(source), "--target", str(target)]
    source.write_text(lines[0] + "\n")
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bleu"] >= 0 and "chrf" in result
