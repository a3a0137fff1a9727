"""Splitting inputs into sentences (and over-long sentences into chunks) and joining their
translations: the splitter alone, then the Python API, an export, the CLI and the server."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from translator.api import Translator
from translator.cli import main
from translator.config import TokenizerConfig
from translator.serving import ServeSettings, create_app
from translator.splitting import Splitter
from translator.tokenizer import train_sentencepiece
from translator.translating import join_rows

# -- the splitter, no model --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "sentences"),
    [
        ("en", ["Dr. Smith arrived.", "He left at 5 p.m. today!"]),
        ("de", ["Er kam z. B. am 3. Mai an.", "Es regnete."]),
        ("fr", ["Bonjour !", "Comment ça va ?", "Très bien."]),
        ("cs", ["Muž jede na kole.", "Např. prof. Novák čte."]),
        ("en", ["One sentence without an end"]),
    ],
)
def test_sentences_in_each_language(language, sentences):
    text = "  " + " ".join(sentences) + "  "
    assert Splitter(language, 100).sentences(text) == sentences


def test_segment_keeps_order_and_blank_inputs():
    texts = ["A dog runs.", "", "A cat. A bird!", "   ", "One. Two? Three."]
    segments = Splitter("en", 100).segment(texts)
    assert segments.units == [
        "A dog runs.",
        "",
        "A cat.",
        "A bird!",
        "   ",
        "One.",
        "Two?",
        "Three.",
    ]
    assert segments.counts == [1, 1, 2, 1, 3] and segments.chunked == 0
    grouped = segments.regroup([u.upper() for u in segments.units])
    assert grouped == [
        ["A DOG RUNS."],
        [""],
        ["A CAT.", "A BIRD!"],
        ["   "],
        ["ONE.", "TWO?", "THREE."],
    ]
    with pytest.raises(ValueError, match="expected 8 results, got 7"):
        segments.regroup(segments.units[:-1])


@pytest.fixture(scope="module")
def sentencepiece_model() -> bytes:
    words = "the a dog cat bird runs sees likes red blue green house garden".split()
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(words, 8)) for _ in range(300)]
    return train_sentencepiece(sentences, TokenizerConfig(vocab_size=40))


def test_chunks_cut_at_words_within_the_limit_and_lose_no_text(sentencepiece_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(sentencepiece_model)
    splitter = Splitter("en", 12, sentencepiece_model)
    sentence = "the red dog  sees a blue bird in the green garden of the house " * 6
    chunks = splitter.chunks(sentence)
    assert len(chunks) > 3
    assert all(1 <= len(sp.EncodeAsIds(c)) <= 12 for c in chunks)
    assert " ".join(chunks) == " ".join(sentence.split())  # whole words, in order, none lost
    # A sentence within the limit stays as it is, spaces included.
    assert splitter.chunks("the  dog runs") == ["the  dog runs"]
    # One word over the limit alone is cut between its pieces, and nothing of it is lost.
    word = "housegardenbirdcat" * 4
    parts = splitter.chunks(f"a {word} dog")
    assert parts[0] == "a" and parts[-1] == "dog"
    assert "".join(parts[1:-1]) == word and all(len(sp.EncodeAsIds(p)) <= 12 for p in parts)
    assert Splitter("en", 12).chunks(sentence) == [sentence]  # no SentencePiece: no chunks
    segments = splitter.segment(["A dog runs.", sentence])
    assert segments.counts == [1, len(chunks)] and segments.chunked == 1


def test_join_rows_rank_by_rank_with_sums():
    rows = [
        {
            "translations": np.array([b"A dog.", b"The dog."], object),
            "scores": np.array([-1.0, -2.0], np.float32),
            "log_probs": np.array([-2.0, -3.0], np.float32),
            "lengths": np.array([3, 3], np.int32),
            "source_lengths": np.int32(4),
        },
        {
            "translations": np.array([b"It runs.", b""], object),
            "scores": np.array([-0.5, -np.inf], np.float32),
            "log_probs": np.array([-1.0, -np.inf], np.float32),
            "lengths": np.array([3, 0], np.int32),
            "source_lengths": np.int32(3),
        },
    ]
    joined = join_rows(rows)
    assert list(joined["translations"]) == [b"A dog. It runs.", b""]  # slot 2: unfilled in one
    np.testing.assert_allclose(joined["scores"], [-1.5, -np.inf])
    np.testing.assert_allclose(joined["log_probs"], [-3.0, -np.inf])
    assert list(joined["lengths"]) == [7, 4] and joined["source_lengths"] == 7
    # the best-only signatures' rows: 0-d values
    best = join_rows(
        [
            {"translation": b"A.", "score": np.float32(-1)},
            {"translation": b"B.", "score": np.float32(-2)},
        ]
    )
    assert best["translation"].item() == b"A. B." and best["score"] == -3.0
    assert join_rows(rows[:1]) == rows[0]


# -- the Python API on the tiny trained model ---------------------------------------------------


@pytest.fixture(scope="module")
def translator(trained_dir) -> Translator:
    return Translator.load(trained_dir)


@pytest.fixture(scope="module")
def sources(synthetic_files) -> list[str]:
    return synthetic_files["test.src"].read_text().splitlines()[:6]


def _texts(sources: list[str]) -> list[str]:
    """Inputs of 1, 2 and 3 sentences, and blank ones."""
    a, b, c, d, e, f = sources
    return [f"{a}.", "", f"{b}. {c}.", "  ", f"{d}. {e}! {f}?", a]


def test_split_translates_each_sentence_and_joins_in_order(translator, sources):
    texts = _texts(sources)
    segments = translator.splitter.segment(texts)
    assert segments.counts == [1, 1, 2, 1, 3, 1]
    alone = translator.translate(segments.units, split=False)  # one unit per input
    want = [" ".join(t for t in group if t) for group in segments.regroup(alone)]
    assert translator.translate(texts) == want
    assert want[1] == want[3] == "" and want[2].count(" ") > want[0].count(" ")
    # Scores and log-probabilities of a joined translation are the units' sums.
    joined = translator.translate(texts, return_scores=True)
    units = translator.translate(segments.units, return_scores=True, split=False)
    parts = segments.regroup(units)
    for hyps, group in zip(joined, parts, strict=True):
        assert hyps[0].score == pytest.approx(sum(h[0].score for h in group), abs=1e-4)
        assert hyps[0].log_prob == pytest.approx(sum(h[0].log_prob for h in group), abs=1e-4)


def test_n_best_of_a_split_input_joins_rank_by_rank(translator, sources):
    text = f"{sources[0]}. {sources[1]}."
    units = translator.splitter.split(text)
    assert len(units) == 2
    per_unit = translator.translate(units, beam_size=3, n_best=2, split=False)
    (joined,) = translator.translate([text], beam_size=3, n_best=2)
    assert [h.text for h in joined] == [
        f"{per_unit[0][k].text} {per_unit[1][k].text}" for k in (0, 1)
    ]
    assert joined[0].score >= joined[1].score


def test_split_off_is_the_whole_text_as_one_sequence(translator, sources):
    import tensorflow as tf

    from translator.translating import hypotheses

    texts = _texts(sources)
    off = translator.translate(texts, split=False, return_scores=True)
    d = translator.config.decode
    fn = translator.translate_function(d.beam_size, 1, d.length_penalty, d.max_length_ratio)
    direct = hypotheses(fn(tf.constant(texts)))
    assert [h[0].text for h in off] == [h[0].text for h in direct]
    np.testing.assert_allclose([h[0].score for h in off], [h[0].score for h in direct], atol=1e-5)
    # The config's decode.split=false makes that the default; split must be a bool.
    config = dataclasses.replace(translator.config, decode=dataclasses.replace(d, split=False))
    unsplit = Translator(translator.model, translator.tokenizers, config)
    assert unsplit.translate(texts) == [h[0].text for h in off]
    assert unsplit.translate(texts, split=True) == translator.translate(texts)
    with pytest.raises(TypeError, match="split must be True or False, got str"):
        translator.translate(texts, split="yes")


def test_over_long_sentence_is_chunked_not_truncated(translator, sources, caplog):
    d = translator.config.decode
    config = dataclasses.replace(
        translator.config, decode=dataclasses.replace(d, max_source_length=10)
    )
    short = Translator(translator.model, translator.tokenizers, config)
    text = f"{sources[0]} {sources[1]} {sources[2]}"  # 21 words, no sentence end
    chunks = short.splitter.chunks(text)
    assert len(chunks) >= 3 and " ".join(chunks) == text
    caplog.set_level(logging.INFO, logger="translator.api")
    neighbour = " ".join(sources[3].split()[:2])  # within the limit: translated as it is
    assert short.splitter.split(neighbour) == [neighbour]
    got = short.translate([text, neighbour])
    assert got[0] == " ".join(short.translate(chunks, split=False))
    assert got[1] == translator.translate([neighbour])[0]
    assert "1 sentence(s) longer than 10 pieces were cut into chunks" in caplog.text
    assert "truncated" not in caplog.text
    caplog.clear()
    short.translate([text], split=False)
    assert "1 source sentence(s) longer than 10 pieces were truncated" in caplog.text


def test_very_long_inputs_are_chunked_in_bounded_time(translator, sources):
    words = (sources[0] + " ") * 600  # 4,200 words: chunks of at most 256 pieces
    unknown_run = "\u0100" * 200_000  # one unknown "word": cut into runs before tokenizing
    start = time.perf_counter()
    result = translator.translate([words, unknown_run, sources[1]])
    seconds = time.perf_counter() - start
    assert result[2] == translator.translate([sources[1]])[0]
    # Every chunk was translated, not just the start: one gives at most decode.max_length pieces.
    assert len(result[0].split()) > 4 * translator.config.decode.max_length
    assert seconds < 60, f"long inputs took {seconds:.1f} s"


def test_export_splits_like_the_model(translator, tiny_export, sources):
    exported = Translator.load(tiny_export)
    texts = _texts(sources)
    assert exported.translate(texts) == translator.translate(texts)
    assert exported.translate(texts, split=False) == translator.translate(texts, split=False)
    assert exported.splitter.segment(texts) == translator.splitter.segment(texts)


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_translate_and_evaluate_split_by_default(
    translator, trained_dir, sources, tmp_path, capsys
):
    texts = _texts(sources)
    path = tmp_path / "in.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    base = ["translate", "--model", str(trained_dir), "--input", str(path)]
    assert main(base) == 0
    assert capsys.readouterr().out.split("\n")[:-1] == translator.translate(texts)
    assert main([*base, "--no-split"]) == 0
    assert capsys.readouterr().out.split("\n")[:-1] == translator.translate(texts, split=False)

    refs = tmp_path / "ref.txt"
    refs.write_text("\n".join(translator.translate(texts)) + "\n", encoding="utf-8")
    evaluate = [
        "evaluate",
        "--model",
        str(trained_dir),
        "--source",
        str(path),
        "--target",
        str(refs),
    ]
    assert main(evaluate) == 0
    assert json.loads(capsys.readouterr().out)["bleu"] == pytest.approx(100.0)
    assert main([*evaluate, "--no-split"]) == 0
    assert json.loads(capsys.readouterr().out)["bleu"] < 100.0


# -- server ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_export):
    with TestClient(create_app(tiny_export, ServeSettings(max_wait_ms=1))) as client:
        yield client


def test_server_translate_splits_unless_asked_not_to(client, translator, sources):
    texts = _texts(sources)
    r = client.post("/v1/translate", json={"text": texts})
    assert r.status_code == 200, r.text
    got = r.json()["translations"]
    want = translator.translate(texts, return_scores=True)
    assert [t["text"] for t in got] == [h[0].text for h in want]
    np.testing.assert_allclose([t["score"] for t in got], [h[0].score for h in want], atol=1e-4)
    np.testing.assert_allclose(
        [t["confidence"] for t in got], [h[0].confidence for h in want], atol=1e-4
    )
    r = client.post("/v1/translate", json={"text": texts, "split": False})
    assert [t["text"] for t in r.json()["translations"]] == translator.translate(texts, split=False)
    full = texts[0::2]  # no blank input: a blank one has a single hypothesis in the API
    r = client.post("/v1/translate", json={"text": full, "beam_size": 5, "n_best": 2})
    hyps = translator.translate(full, beam_size=5, n_best=2)
    assert [[h["text"] for h in t["hypotheses"]] for t in r.json()["translations"]] == [
        [h.text for h in x] for x in hyps
    ]
    r = client.post("/v1/translate", json={"text": texts, "split": "no"})
    assert r.status_code == 400 and "split" in r.json()["error"]


def test_server_predict_splits_unless_asked_not_to(client, translator, sources):
    texts = _texts(sources)
    r = client.post("/v1/models/tiny:predict", json={"instances": texts})
    assert r.status_code == 200, r.text
    assert [p["translation"] for p in r.json()["predictions"]] == translator.translate(texts)
    full = texts[0::2]  # no blank input: a blank one has a single hypothesis in the API
    body = {"signature_name": "beam", "inputs": full, "split": False}
    r = client.post("/v1/models/tiny:predict", json=body)
    want = translator.translate(full, beam_size=5, n_best=5, split=False)
    assert r.json()["outputs"]["translations"] == [[h.text for h in x] for x in want]
    body["split"] = True
    r = client.post("/v1/models/tiny:predict", json=body)
    want = translator.translate(full, beam_size=5, n_best=5)
    assert r.json()["outputs"]["translations"] == [[h.text for h in x] for x in want]
    r = client.post("/v1/models/tiny:predict", json={"instances": texts, "split": 1})
    assert (
        r.status_code == 400 and r.json()["error"] == "'split' must be true or false, got a number"
    )
