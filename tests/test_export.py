"""Export: TF Serving layout, in-graph tokenization, exact parity on reload, atomic writes."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from translator.api import Translator
from translator.cli import main
from translator.config import SplitConfig
from translator.errors import ModelDirError
from translator.export import (
    ExportedTranslator,
    ExportError,
    export_model,
    list_versions,
    parity,
    writer,
)

# Run in a fresh interpreter: only tensorflow and tensorflow_text may be imported.
CLIENT = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
path, sentences = sys.argv[1], json.loads(sys.stdin.read())
loaded = tf.saved_model.load(path)
def plain(x):
    x = x.numpy()
    x = x.tolist() if hasattr(x, "tolist") else x
    return json.loads(json.dumps(x, default=lambda b: b.decode("utf-8")))
text = tf.constant(sentences)
out = {name: {k: plain(v) for k, v in loaded.signatures[name](text=text).items()}
       for name in ("serving_default", "greedy", "beam")}
out["model_info"] = {k: plain(v) for k, v in loaded.signatures["model_info"]().items()}
out["modules"] = sorted(m for m in sys.modules if m.startswith("translator"))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sentences(synthetic_files) -> list[str]:
    return synthetic_files["test.src"].read_text().splitlines()[:24] + ["", "   "]


@pytest.fixture(scope="module")
def exported(tiny_export):
    """The tiny trained model exported once for the session: (base dir, version dir)."""
    return tiny_export, tiny_export / "1"


@pytest.fixture(scope="module")
def api(trained_dir) -> Translator:
    return Translator.load(trained_dir)


def test_layout_is_tf_serving_versioned_with_assets(exported, trained_dir):
    base, version_dir = exported
    assert version_dir == base / "1"
    assert sorted(p.name for p in base.iterdir()) == ["1"]  # no temporary directory left
    names = {p.name for p in version_dir.iterdir()}
    assert {"saved_model.pb", "variables", "assets"} <= names
    assert any((version_dir / "variables").glob("variables.data-*"))
    assets = version_dir / "assets"
    for name in ("spm.source.model", "spm.target.model", "config.yaml"):
        assert (assets / name).read_bytes() == (trained_dir / name).read_bytes()
    info = json.loads((assets / "export.json").read_text())
    assert info["decoders"]["beam"]["beam_size"] == 5 and info["decoders"]["beam"]["n_best"] == 5


def test_reloads_with_tensorflow_only_and_matches_the_python_api(exported, api, sentences):
    _, version_dir = exported
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", CLIENT, str(version_dir)],
        input=json.dumps(sentences),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["modules"] == []  # nothing of this package was needed

    greedy = api.translate(sentences, beam_size=1, return_scores=True)
    for name in ("serving_default", "greedy"):  # the config's default decoding is greedy
        assert out[name]["translation"] == [h[0].text for h in greedy]
        np.testing.assert_allclose(out[name]["score"], [h[0].score for h in greedy], atol=1e-5)
    assert out["greedy"]["translation"][-2:] == ["", ""]  # empty inputs give ""
    translated = out["greedy"]["translation"][:-2]
    assert all(t and t != s for t, s in zip(translated, sentences[:-2], strict=True))

    beam = api.translate(sentences, beam_size=5, n_best=5, return_scores=True)
    assert [len(row) for row in out["beam"]["translations"]] == [5] * len(sentences)
    for row, scores, hyps in zip(
        out["beam"]["translations"][:-2], out["beam"]["scores"][:-2], beam[:-2], strict=True
    ):
        assert row == [h.text for h in hyps]
        np.testing.assert_allclose(scores, [h.score for h in hyps], atol=1e-5)
        assert scores == sorted(scores, reverse=True)


def test_model_info_signature(exported, trained_dir, api):
    _, version_dir = exported
    loaded = ExportedTranslator.load(version_dir)
    info = loaded.info
    assert (info["source_lang"], info["target_lang"]) == ("xx", "en")
    fingerprints = api.tokenizers.fingerprints()
    assert info["source_vocab_fingerprint"] == fingerprints["source"]
    assert info["target_vocab_fingerprint"] == fingerprints["target"]
    # The best checkpoint is saved with checkpoint_number = training step.
    state = (trained_dir / "best" / "checkpoint").read_text()
    step = int(re.search(r'model_checkpoint_path: "ckpt-(\d+)"', state).group(1))
    assert info["training_steps"] == step > 0
    when = datetime.datetime.fromisoformat(info["export_time"])
    assert abs(datetime.datetime.now(datetime.UTC) - when) < datetime.timedelta(hours=1)
    assert json.loads(info["decoders"])["serving_default"]["beam_size"] == 1


def test_translator_load_accepts_export_dirs(exported, api, sentences):
    base, version_dir = exported
    for directory in (base, version_dir):
        loaded = Translator.load(directory)
        assert isinstance(loaded, ExportedTranslator)
        assert loaded.translate(sentences) == api.translate(sentences)
    beam = loaded.translate(sentences[:6], beam_size=5, n_best=2, return_scores=True)
    want = api.translate(sentences[:6], beam_size=5, n_best=2, return_scores=True)
    assert [[h.text for h in hyps] for hyps in beam] == [[h.text for h in hyps] for hyps in want]
    np.testing.assert_allclose(
        [[h.log_prob for h in hyps] for hyps in beam],
        [[h.log_prob for h in hyps] for hyps in want],
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="no decoder for beam_size=3"):
        loaded.translate(sentences, beam_size=3)
    with pytest.raises(TypeError):
        loaded.translate("not a list")


def test_cli_export_takes_the_next_free_version(exported, trained_dir, tmp_path, capsys):
    base = tmp_path / "m"
    shutil.copytree(exported[1], base / "3")
    (base / "7").mkdir()  # a foreign, incomplete directory: not a version, but its number is taken
    (base / ".export-crashed.tmp").mkdir()
    code = main(
        ["export", "--model", str(trained_dir), "--output", str(base), "--parity-sentences", "4"]
        + ["--precision", "float32"]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == {
        "export": str(base / "8"),
        "version": 8,
        "precision": "float32",
        "precision_check": {},
    }
    assert list_versions(base) == [3, 8]


def test_failed_parity_check_leaves_nothing_behind(exported, trained_dir, tmp_path, monkeypatch):
    base = tmp_path / "m"
    shutil.copytree(exported[1], base / "1")
    before = {p.relative_to(base): p.read_bytes() for p in base.rglob("*") if p.is_file()}

    def wrong(version_dir, sentences, signatures):
        real = {"translation": ["wrong"] * len(sentences), "score": [0.0] * len(sentences)}
        return {name: real for name in signatures}

    monkeypatch.setattr(parity, "reload_in_subprocess", wrong)
    with pytest.raises(ExportError, match="parity check failed: signature 'serving_default'"):
        export_model(trained_dir, base, parity_sentences=4, precision="float32")
    after = {p.relative_to(base): p.read_bytes() for p in base.rglob("*") if p.is_file()}
    assert after == before  # version 1 intact, no version 2, no temporary directory


def test_write_failure_removes_temp_dir_and_new_base(trained_dir, tmp_path, monkeypatch):
    base = tmp_path / "new" / "deeper" / "m"

    def full_disk(module, directory, signatures=None):
        (writer.Path(directory) / "saved_model.pb").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.tf.saved_model, "save", full_disk)
    with pytest.raises(ExportError, match="No space left on device"):
        export_model(trained_dir, base, precision="float32")
    assert list(tmp_path.iterdir()) == []  # every directory the export created is gone


def test_unwritable_output_is_a_one_line_cli_error(trained_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["export", "--model", str(trained_dir), "--output", str(blocker / "m")])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("error: cannot write export to") and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--beam-size", "0"], "beam size 0"), (["--beam-size", "2", "--n-best", "3"], "n-best 3")],
)
def test_bad_export_options(trained_dir, tmp_path, capsys, flags, message):
    code = main(["export", "--model", str(trained_dir), "--output", str(tmp_path / "m"), *flags])
    _, err = capsys.readouterr()
    assert code == 2 and message in err
    assert not (tmp_path / "m").exists()


def test_export_of_an_export_or_a_missing_dir_is_refused(exported, tmp_path):
    with pytest.raises(ModelDirError, match="already an export"):
        export_model(exported[0], tmp_path / "m")
    with pytest.raises(ModelDirError, match="not found"):
        export_model(tmp_path / "nothing", tmp_path / "m")


def test_parity_sample_is_the_validation_split_or_vocabulary_sentences(
    api, synthetic_files, tmp_path, caplog
):
    valid = synthetic_files["valid.src"].read_text().splitlines()
    assert parity.parity_sample(api, 5) == valid[:5] + [""]
    gone = SplitConfig(str(tmp_path / "gone.src"), str(tmp_path / "gone.tgt"))
    config = dataclasses.replace(api.config, data=dataclasses.replace(api.config.data, valid=gone))
    sample = parity.parity_sample(Translator(api.model, api.tokenizers, config), 5)
    assert len(sample) == 6 and sample[-1] == "" and all(sample[:-1])
    assert not set(sample) & set(valid)
    assert "cannot read the valid split" in caplog.text


def test_attention_signature_is_introspects_attention_map(
    attention_export, attention_dir, synthetic_files, exported
):
    from translator.introspect import attention_map

    texts = synthetic_files["test.src"].read_text().splitlines()[:4]
    # A batch of sentences of different lengths, run with only tensorflow and tensorflow_text.
    out = parity.reload_in_subprocess(attention_export / "1", texts, ["attention"])["attention"]
    api = Translator.load(attention_dir)
    assert out["translation"] == api.translate(texts, beam_size=1)
    for i, text in enumerate(texts):
        want = attention_map(api, text, beam_size=1)
        src, tgt = out["source_length"][i], out["target_length"][i]
        assert out["translation"][i] == want.translation
        assert out["source_pieces"][i][:src] == want.source_pieces
        assert out["target_pieces"][i][:tgt] == want.target_pieces
        weights = np.asarray(out["weights"][i])
        np.testing.assert_allclose(weights[:tgt, :src], want.weights, atol=1e-5)
        np.testing.assert_allclose(weights[:tgt, :src].sum(axis=1), 1.0, atol=1e-5)
    signatures = ExportedTranslator.load(attention_export).loaded.signatures
    assert set(signatures) == {"serving_default", "greedy", "beam", "model_info", "attention"}
    # A model without attention has no such signature.
    assert "attention" not in ExportedTranslator.load(exported[1]).loaded.signatures


def test_bfloat16_export_passes_the_precision_gate_and_reports_it(
    exported, trained_dir, tmp_path, capsys
):
    base = tmp_path / "m"
    flags = ["--parity-sentences", "4", "--precision", "bfloat16"]
    code = main(["export", "--model", str(trained_dir), "--output", str(base), *flags])
    out, _ = capsys.readouterr()
    assert code == 0
    printed = json.loads(out)
    assert printed["precision"] == "bfloat16"
    check = printed["precision_check"]
    assert check["sentences"] == 100 and check["tolerance"] == 0.3  # the whole valid split
    assert set(check["decoders"]) == {"serving_default", "beam"}  # greedy is serving_default
    for row in check["decoders"].values():
        assert abs(row["bleu_bfloat16"] - row["bleu_float32"]) <= 0.3
        assert 0.5 <= row["identical"] <= 1.0
    loaded = Translator.load(base)
    assert loaded.precision == "bfloat16" and loaded.info["precision"] == "bfloat16"
    # the decoder's weights were cast at export time and saved (`search_step.store_weights`)
    stored = loaded.loaded.stored_weights
    assert stored and {v.dtype for v in stored if v.shape.rank == 2} == {tf.bfloat16}
    assert json.loads(loaded.info["precision_check"]) == check
    info = json.loads((base / "1" / "assets" / "export.json").read_text())
    assert info["precision"] == "bfloat16" and info["precision_check"] == check
    # float32 exports say so, and have no check to report
    assert Translator.load(exported[0]).precision == "float32"


def test_failed_precision_gate_leaves_nothing_behind(trained_dir, tmp_path, caplog):
    base = tmp_path / "new" / "m"
    with pytest.raises(ExportError, match=r"precision check failed: bfloat16 BLEU .* tolerance"):
        # a negative tolerance no BLEU difference can meet: the gate must fail
        export_model(trained_dir, base, precision="bfloat16", bleu_tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []  # no version directory, no base directory


def test_auto_precision_falls_back_to_float32_when_the_gate_fails(trained_dir, tmp_path):
    # auto: bfloat16 only where it keeps the quality (on a CPU without bfloat16, float32 anyway)
    version_dir = export_model(
        trained_dir, tmp_path / "m", precision="auto", bleu_tolerance=-1.0, parity_sentences=8
    )
    assert Translator.load(version_dir).precision == "float32"


def test_bad_precision_is_refused_before_anything_is_written(trained_dir, tmp_path, capsys):
    with pytest.raises(ExportError, match="precision must be one of auto, bfloat16, float32"):
        export_model(trained_dir, tmp_path / "m", precision="float16")
    with pytest.raises(SystemExit) as exit_:  # argparse's choices
        main(
            ["export", "--model", str(trained_dir), "--output", str(tmp_path / "m")]
            + ["--precision", "half"]
        )
    assert exit_.value.code == 2 and "--precision" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
