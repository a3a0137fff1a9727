"""The search's step callback: bitwise `decode_step` in float32, close to it in bfloat16."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from translator.config import ModelConfig
from translator.constants import TOP_K_BLOCK
from translator.decoding import beam_search, greedy_search
from translator.model import build_model
from translator.precision import dtype_policy

SOURCE = tf.constant([[5, 6, 7, 8, 9], [10, 11, 0, 0, 0], [12, 13, 14, 0, 0]])
MAX_LENGTHS = tf.constant([9, 5, 7])

VARIANTS = {
    "luong": {"attention": "luong"},
    "bahdanau-2-layers": {"attention": "bahdanau", "encoder_layers": 2, "decoder_layers": 2},
    "none-tied": {"attention": "none", "tie_embeddings": True, "embedding_dim": 8},
    "luong-tied-bridge": {
        "attention": "luong",
        "tie_embeddings": True,
        "bridge": True,
        "decoder_units": 12,
    },
    # the attentional vector at the embedding width: tied without a map to it
    "luong-tied-narrow-feed": {"attention": "luong", "tie_embeddings": True, "attentional_dim": 16},
}


def model(variant: str, policy: str = "float32"):
    keras.utils.set_random_seed(3)
    config = ModelConfig(**{"embedding_dim": 16, "units": 16, **VARIANTS[variant]})
    with dtype_policy(policy):
        m = build_model(config, 40, 30)
    # Random weights put all 30 target tokens near-uniform: sharpen the output so that
    # hypotheses differ and EOS (3) gets emitted.
    for w in m.decoder.weights:
        if "output" in w.path or "embedding" in w.path:
            w.assign(w * 8.0)
    return m


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_float32_searches_are_bitwise_those_of_decode_step(variant):
    m = model(variant)

    @tf.function
    def both(source):
        state = m.encode(source)
        out = {}
        for name, k in (("greedy", 1), ("beam", 3)):
            step, loop_state = m.search_step(state, k)
            for key, fn, s in (("fast", step, loop_state), ("plain", m.decode_step, state)):
                if k == 1:
                    out[name, key] = greedy_search(fn, s, MAX_LENGTHS, length_penalty=0.6)
                else:
                    out[name, key] = beam_search(fn, s, MAX_LENGTHS, k, 0.6, n_best=3)
        return out

    out = both(SOURCE)
    for name in ("greedy", "beam"):
        fast, plain = out[name, "fast"], out[name, "plain"]
        for field in fast._fields:
            np.testing.assert_array_equal(getattr(fast, field), getattr(plain, field))
    assert out["greedy", "fast"].lengths.numpy().max() > 1  # the test decodes something


def _search(step, loop_state, max_lengths, beam_size: int, **options):
    """Greedy search at beam 1, else beam 3 keeping 2 hypotheses (`fixed` with `compact`)."""
    if beam_size == 1:
        return greedy_search(step, loop_state, max_lengths, **options)
    if options.get("compact"):
        options.update(fixed=True)  # the fixed state is the loop state's second part
    return beam_search(step, loop_state, max_lengths, beam_size, 0.6, 2, **options)


@pytest.mark.parametrize("beam_size", [1, 3], ids=["greedy", "beam"])
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_dropping_finished_sentences_decodes_the_same(variant, policy, beam_size):
    m = model(variant, policy)
    source = tf.concat([SOURCE, SOURCE[::-1], SOURCE[1:]], 0)  # 8 sentences
    max_lengths = tf.constant([9, 5, 7, 2, 8, 1, 6, 3])

    @tf.function
    def both(source):
        state = m.encode(source)
        step, loop_state = m.search_step(state, beam_size, logits=True)
        whole = _search(step, loop_state, max_lengths, beam_size, logits=True)
        step, loop_state = m.search_step(state, beam_size, logits=True, fixed_in_state=True)
        dropping = _search(step, loop_state, max_lengths, beam_size, logits=True, compact=0.9)
        return whole, dropping

    whole, dropping = both(source)
    np.testing.assert_array_equal(dropping.tokens, whole.tokens)
    np.testing.assert_array_equal(dropping.lengths, whole.lengths)
    np.testing.assert_allclose(dropping.log_probs, whole.log_probs, rtol=1e-6)
    assert whole.lengths.numpy().max() > 1  # the test decodes something


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_bfloat16_step_matches_decode_step_within_bfloat16_rounding(variant):
    m = model(variant, "mixed_bfloat16")
    assert m.compute_dtype == "bfloat16"
    state = m.encode(SOURCE)
    step, loop_state = m.search_step(state)
    tokens = tf.constant([2, 2, 2])
    vocab = m.target_vocab_size
    for _ in range(4):
        fast, loop_state = step(tokens, loop_state)
        plain, state = m.decode_step(tokens, state)
        assert fast.dtype == tf.float32
        # the vocabulary padded to a multiple of TOP_K_BLOCK with tokens of probability 0
        assert fast.shape[-1] % TOP_K_BLOCK == 0 and fast.shape[-1] - vocab < TOP_K_BLOCK
        assert np.all(fast.numpy()[:, vocab:] == -np.inf)
        fast = fast[:, :vocab]
        # bfloat16 keeps 8 bits: a logit of size ~10 moves by ~0.05 per rounding
        np.testing.assert_allclose(fast.numpy(), plain.numpy(), atol=0.25)
        tokens = tf.argmax(plain, -1, output_type=tf.int32)
    f32 = model(variant)
    reference, _ = f32.decode_step(tf.constant([2, 2, 2]), f32.encode(SOURCE))
    step, loop_state = m.search_step(m.encode(SOURCE))
    first = step(tf.constant([2, 2, 2]), loop_state)[0][:, :vocab]
    np.testing.assert_allclose(first.numpy(), reference.numpy(), atol=0.25)
    assert not np.array_equal(first.numpy(), reference.numpy())  # it did run in bfloat16


def test_search_step_keeps_the_fixed_state_out_of_the_loop():
    m = model("luong")
    state = m.encode(SOURCE)
    _, loop_state = m.search_step(state, beam_size=4)
    assert sorted(loop_state) == ["c0", "feed", "h0"]
    assert loop_state["h0"].shape[0] == 3  # per sentence: beam_search repeats it


def _weight_casts(fn, *args) -> list[str]:
    """The matrix casts of `fn`'s graph outside the encoder (whose layers cast their own
    weights once per call, as does the attention keys' projection)."""
    graph = tf.function(fn).get_concrete_function(*args).graph
    encoder_side = ("encoder", "bridge", "memory_dense")
    return [
        op.name
        for op in graph.get_operations()
        if op.type == "Cast"
        and op.inputs[0].shape.rank == 2
        and op.inputs[0].op.type in ("ReadVariableOp", "Identity")
        and not any(part in op.name for part in encoder_side)
    ]


@pytest.mark.parametrize("variant", ["luong-tied-bridge", "bahdanau-2-layers"])
def test_stored_bfloat16_weights_are_cast_once_and_decode_the_same(variant):
    m = model(variant, "mixed_bfloat16")

    def search(source):
        step, loop_state = m.search_step(m.encode(source), 3)
        return beam_search(step, loop_state, MAX_LENGTHS, 3, 0.6, n_best=3)

    cast_per_call = search(SOURCE)
    assert _weight_casts(search, SOURCE)  # without stored weights a call casts them
    stored = m.store_search_weights()
    assert stored and not any(v.trainable for v in stored)
    assert all(v.dtype == tf.bfloat16 for v in stored if v.shape.rank == 2)  # biases: float32
    assert m.stored_weights() == stored
    assert not any(v is w for v in stored for w in m.weights)  # not model weights
    assert not _weight_casts(search, SOURCE)  # the decoder's matrices are read as bfloat16
    for got, want in zip(search(SOURCE), cast_per_call, strict=True):
        np.testing.assert_array_equal(got, want)


def test_float32_has_nothing_to_store():
    m = model("luong")
    assert m.store_search_weights() == [] and m.stored_weights() == []
