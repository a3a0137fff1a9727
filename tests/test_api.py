"""Python API on a real tiny model: greedy vs beam, batch invariance, termination, bad input."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from translator.api import Hypothesis, Translator
from translator.constants import FLOAT32_BELOW_ROWS
from translator.decoding import beam_search, greedy_search
from translator.model import build_model


@pytest.fixture(scope="module")
def translator(trained_dir) -> Translator:
    return Translator.load(trained_dir)


@pytest.fixture(scope="module")
def sources(synthetic_files) -> list[str]:
    return synthetic_files["test.src"].read_text().splitlines()[:64]


def test_beam_search_with_one_beam_is_exactly_greedy_on_a_real_model(translator, sources):
    """The API maps beam_size=1 to greedy; beam_search itself must agree token for token."""
    model = translator.model
    pieces = translator.tokenizers.source.tokenize(tf.constant(sources))
    source = tf.concat([pieces, tf.fill([len(sources), 1], 3)], axis=1).to_tensor(0)  # + EOS
    max_lengths = tf.fill([len(sources)], 40)
    for alpha in (0.0, 0.6):
        state = model.encode(source)
        greedy = greedy_search(model.decode_step, state, max_lengths, length_penalty=alpha)
        beam = beam_search(model.decode_step, state, max_lengths, 1, alpha, 1)
        np.testing.assert_array_equal(greedy.tokens.numpy(), beam.tokens.numpy())
        np.testing.assert_array_equal(greedy.lengths.numpy(), beam.lengths.numpy())
        np.testing.assert_allclose(greedy.scores.numpy(), beam.scores.numpy(), rtol=1e-6)


def test_beam_finds_at_least_the_greedy_probability(translator, sources):
    greedy = translator.translate(sources, beam_size=1, return_scores=True)
    beam = translator.translate(sources, beam_size=5, length_penalty=0.0, return_scores=True)
    for g, b in zip(greedy, beam, strict=True):
        assert b[0].log_prob >= g[0].log_prob - 1e-4


def test_n_best_sorted_and_distinct(translator, sources):
    results = translator.translate(sources[:8], beam_size=5, n_best=3, length_penalty=0.6)
    for hyps in results:
        assert len(hyps) == 3 and all(isinstance(h, Hypothesis) for h in hyps)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({h.text for h in hyps}) == 3
        assert all(h.confidence <= 0 for h in hyps)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_results_do_not_depend_on_the_batch(translator, sources, beam_size):
    batch = translator.translate(sources, beam_size=beam_size, return_scores=True)
    for i in (0, 17, 63):
        alone = translator.translate([sources[i]], beam_size=beam_size, return_scores=True)
        assert alone[0][0].text == batch[i][0].text
        assert alone[0][0].log_prob == pytest.approx(batch[i][0].log_prob, abs=1e-4)


def test_empty_inputs_skip_the_model_and_keep_order(translator, sources, monkeypatch):
    mixed = ["", sources[0], "   ", "\t", sources[1], ""]
    expected = translator.translate([sources[0], sources[1]])
    assert translator.translate(mixed) == ["", expected[0], "", "", expected[1], ""]

    def fail(*args, **kwargs):
        raise AssertionError("the model ran on empty input")

    monkeypatch.setattr(translator, "translate_function", fail)
    assert translator.translate(["", "  "]) == ["", ""]
    assert translator.translate([]) == []


def test_untrained_model_terminates_within_the_length_bound(translator, sources):
    keras.utils.set_random_seed(3)
    model = build_model(
        translator.config.model,
        translator.tokenizers.source_vocab_size,
        translator.tokenizers.target_vocab_size,
    )
    config = dataclasses.replace(
        translator.config, decode=dataclasses.replace(translator.config.decode, max_length=12)
    )
    untrained = Translator(model, translator.tokenizers, config)
    for beam_size in (1, 3):
        results = untrained.translate(
            sources[:4], beam_size=beam_size, return_scores=True, max_length_ratio=0.5
        )
        assert len(results) == 4
        fn = untrained.translate_function(beam_size, 1, 0.6, 0.5)
        out = fn(tf.constant(sources[:4]))
        assert int(tf.reduce_max(out["lengths"])) <= 12


def test_decode_defaults_come_from_the_config(translator, sources):
    config = dataclasses.replace(
        translator.config,
        decode=dataclasses.replace(translator.config.decode, beam_size=4, n_best=2),
    )
    t = Translator(translator.model, translator.tokenizers, config)
    results = t.translate(sources[:2])
    assert all(len(h) == 2 for h in results)
    assert t.translate(sources[:2], beam_size=1, n_best=1) == translator.translate(sources[:2])


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        (None, TypeError, "list of strings"),
        ("Ein Satz.", TypeError, "wrap it in a list"),
        (["ok", 3], TypeError, "item 1 is int"),
        ([b"bytes"], TypeError, "item 0 is bytes"),
    ],
)
def test_bad_input_types(translator, texts, error, match):
    with pytest.raises(error, match=match):
        translator.translate(texts)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": 2, "n_best": 3}, "n_best"),
        ({"length_penalty": -1.0}, "length_penalty"),
        ({"max_length_ratio": 0.0}, "max_length_ratio"),
    ],
)
def test_bad_decode_options(translator, kwargs, match):
    with pytest.raises(ValueError, match=match):
        translator.translate(["da rosso hunto"], **kwargs)


def test_bfloat16_translates_small_batches_exactly_as_float32(translator, trained_dir, sources):
    bf16 = Translator.from_model_dir(trained_dir, precision="bfloat16")
    assert bf16.float32_below == FLOAT32_BELOW_ROWS
    bf16.float32_below = 3  # calls of fewer than 3 rows (sentences x beam) run in float32
    batch = sources[:8]

    def scores(t, texts, **kw):
        return [h[0].score for h in t.translate(texts, return_scores=True, **kw)]

    # fewer than 3 rows per call: float32, bitwise as the float32 model's call of that size
    # (not across sizes: a matmul's rounding may depend on its rows, e.g. on AVX2-only CPUs)
    want = scores(translator, batch, batch_size=1)
    assert scores(bf16, batch, batch_size=1) == want
    assert scores(bf16, batch, batch_size=2) == scores(translator, batch, batch_size=2)
    assert scores(bf16, batch, batch_size=1, beam_size=3) != scores(  # 3 rows: bfloat16
        translator, batch, batch_size=1, beam_size=3
    )
    assert scores(bf16, batch, batch_size=8) != scores(translator, batch, batch_size=8)
    never = Translator.from_model_dir(trained_dir, precision="bfloat16")
    never.float32_below = 0
    assert scores(never, batch, batch_size=1) != want


@pytest.mark.parametrize("beam_size", [1, 4])
def test_lean_float32_search_translates_as_the_full_one(
    trained_dir, sources, beam_size, monkeypatch
):
    """`lean` (searches from logits, finished sentences dropped) is wired through in float32
    and changes no translation there; its scores agree within float rounding."""
    import translator.api as api_module

    seen = []
    for name in ("greedy_search", "beam_search"):
        original = getattr(api_module, name)

        def spy(*args, _original=original, **kwargs):
            seen.append(kwargs.get("logits", False))
            return _original(*args, **kwargs)

        monkeypatch.setattr(api_module, name, spy)
    results = {}
    for lean in (False, True):
        t = Translator.from_model_dir(trained_dir, precision="float32")
        t.lean = lean
        results[lean] = t.translate(sources, beam_size=beam_size, return_scores=True, batch_size=16)
    assert seen == [False, True]  # one trace each: the full search, then the lean one
    for full, lean in zip(results[False], results[True], strict=True):
        assert [h.text for h in lean] == [h.text for h in full]
        assert lean[0].score == pytest.approx(full[0].score, abs=1e-4)
