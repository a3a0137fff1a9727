"""CLI: commands work end to end; user mistakes give one line on stderr and exit status 2."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys

import pytest
import yaml
from conftest import tiny_config

from translator.cli import main
from translator.config import config_to_dict


def _write_config(path, config) -> str:
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    return str(path)


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_config_file_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "translator", "train", str(tmp_path / "no.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: config file not found: {tmp_path / 'no.yaml'}"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.unitz=3", "unknown config key 'model.unitz'"),
        ("train.batch_size=many", "config key 'train.batch_size': expected int, got 'many'"),
        ("model.attention=cosine", "config key 'model.attention'"),
    ],
)
def test_bad_config_values(synthetic_files, tmp_path, capsys, override, message):
    cfg = _write_config(tmp_path / "c.yaml", tiny_config(synthetic_files, tmp_path / "out"))
    code, _, err = _run(["train", cfg, "--set", override], capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_misaligned_corpus_fails_before_training(synthetic_files, tmp_path, capsys):
    short = tmp_path / "short.tgt"
    short.write_text("".join(synthetic_files["train.tgt"].read_text().splitlines(True)[:-3]))
    config = tiny_config(synthetic_files, tmp_path / "out", (f"data.train.target={short}",))
    code, _, err = _run(["train", _write_config(tmp_path / "c.yaml", config)], capsys)
    assert code == 2
    assert "train.src has 2000 lines" in err and "short.tgt has 1997 lines" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_invalid_utf8_names_file_and_line(synthetic_files, tmp_path, capsys):
    bad = tmp_path / "bad.src"
    lines = synthetic_files["train.src"].read_bytes().split(b"\n")
    lines[4] = b"da \xff\xfe hunto"
    bad.write_bytes(b"\n".join(lines))
    config = tiny_config(synthetic_files, tmp_path / "out", (f"data.train.source={bad}",))
    code, _, err = _run(["train", _write_config(tmp_path / "c.yaml", config)], capsys)
    assert code == 2
    assert "bad.src" in err and "line 5" in err


def test_empty_corpus_is_an_error(synthetic_files, tmp_path, capsys):
    empty_src, empty_tgt = tmp_path / "e.src", tmp_path / "e.tgt"
    empty_src.write_text("\n \n")
    empty_tgt.write_text("\n\n")
    config = tiny_config(
        synthetic_files,
        tmp_path / "out",
        (f"data.train.source={empty_src}", f"data.train.target={empty_tgt}"),
    )
    code, _, err = _run(["train", _write_config(tmp_path / "c.yaml", config)], capsys)
    assert code == 2
    assert "empty" in err.lower() and "e.src" in err


def test_translate_keeps_order_and_handles_odd_lines(
    trained_dir, synthetic_files, tmp_path, capsys, caplog
):
    caplog.set_level(logging.INFO, logger="translator.api")
    sources = synthetic_files["test.src"].read_text().splitlines()[:5]
    weird = [
        "",
        "   ",
        "da rosso hunto sieht \x00 da blau katu \u202e\U0001f600",
        "ena " * 400,
        "e\u0301\u0300",
    ]
    lines = [sources[0], *weird, sources[1]]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = _run(["translate", "--model", str(trained_dir), "--input", str(path)], capsys)
    assert code == 0
    got = out.split("\n")[:-1]
    assert len(got) == len(lines)
    assert got[1] == "" and got[2] == ""
    expected = synthetic_files["test.tgt"].read_text().splitlines()
    assert got[0] == expected[0] and got[-1] == expected[1]
    assert "1 sentence(s) longer than 256 pieces were cut into chunks" in caplog.text
    code, out, err = _run(
        ["translate", "--model", str(trained_dir), "--input", str(path), "--no-split"], capsys
    )
    assert code == 0 and len(out.split("\n")[:-1]) == len(lines)
    assert "1 source sentence(s) longer than 256 pieces were truncated" in caplog.text


def test_translate_jsonl_with_beam(trained_dir, synthetic_files, tmp_path, capsys):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(synthetic_files["test.src"].read_text().splitlines()[:3]) + "\n")
    code, out, _ = _run(
        [
            "translate",
            "--model",
            str(trained_dir),
            "--input",
            str(path),
            "--beam-size",
            "4",
            "--n-best",
            "3",
            "--format",
            "jsonl",
        ],
        capsys,
    )
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3
    for record in records:
        scores = [t["score"] for t in record["translations"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert len({t["text"] for t in record["translations"]}) == 3


def test_evaluate_prints_sacrebleu_json(trained_dir, synthetic_files, capsys):
    code, out, _ = _run(
        [
            "evaluate",
            "--model",
            str(trained_dir),
            "--source",
            str(synthetic_files["test.src"]),
            "--target",
            str(synthetic_files["test.tgt"]),
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(out)
    assert result["bleu"] > 80 and result["chrf"] > 80
    assert result["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert result["sentences"] == 200


def test_evaluate_split_from_config_and_missing_model(trained_dir, tmp_path, capsys):
    code, out, _ = _run(
        ["evaluate", "--model", str(trained_dir), "--split", "test", "--beam-size", "3"], capsys
    )
    assert code == 0 and json.loads(out)["beam_size"] == 3
    latest = ["evaluate", "--model", str(trained_dir), "--split", "test", "--checkpoint", "latest"]
    code, out, _ = _run(latest, capsys)  # the last training checkpoint, not best/
    assert code == 0 and json.loads(out)["bleu"] > 80
    code, _, err = _run(["translate", "--model", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "model directory not found" in err


def test_gzip_corpus_trains(synthetic_files, tmp_path, capsys):
    gz = tmp_path / "train.src.gz"
    gz.write_bytes(gzip.compress(synthetic_files["train.src"].read_bytes()))
    config = tiny_config(
        synthetic_files, tmp_path / "out", (f"data.train.source={gz}", "train.max_steps=3")
    )
    code, out, _ = _run(
        ["train", _write_config(tmp_path / "c.yaml", config), "--no-progress"], capsys
    )
    assert code == 0 and json.loads(out.splitlines()[-1])["steps"] == 3
