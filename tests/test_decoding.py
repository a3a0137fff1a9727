"""Tests for translator.decoding with scripted step functions and no model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import tensorflow as tf

from translator.decoding import DecodeResult, _top_k, beam_search, greedy_search, mean_step

PAD, BOS, EOS = 0, 2, 3
A, B, C, D = 4, 5, 6, 7
VOCAB = 9
TINY = 1e-4  # probability of every token a scripted node does not list

Spec = Mapping[tuple[int, ...], Mapping[int, float]]


class TreeModel:
    """A step function whose next-token probabilities depend on the whole prefix.

    `spec` maps a prefix (tokens after BOS) to {token: probability}; unlisted tokens get TINY.
    Prefixes that are not listed fall into an absorbing `default` node. The node id is the
    decoder state, so a beam search that gathers the state wrongly decodes the wrong tree.
    """

    def __init__(self, spec: Spec, default: Mapping[int, float] | None = None) -> None:
        prefixes = list(spec)
        self.node = {p: i + 2 for i, p in enumerate(prefixes)}  # 0: before BOS, 1: default
        dists = [{}, default or {}] + [spec[p] for p in prefixes]
        probs = np.full([len(dists), VOCAB], TINY)
        for i, dist in enumerate(dists):
            for token, p in dist.items():
                probs[i, token] = p
        self.log_probs = np.log(probs).astype(np.float32)  # [node, vocab]
        self.next = np.ones([len(dists), VOCAB], np.int32)  # [node, vocab]
        self.next[0, BOS] = self.node.get((), 1)
        for p, i in self.node.items():
            for token in range(VOCAB):
                self.next[i, token] = self.node.get((*p, token), 1)
        self.calls = 0  # eager loops call step_fn once per decoding step

    def __call__(self, tokens: tf.Tensor, state: dict) -> tuple[tf.Tensor, dict]:
        self.calls += 1
        node = tf.gather(tf.reshape(self.next, [-1]), state["node"] * VOCAB + tokens)  # [N]
        return tf.gather(self.log_probs, node), {"node": node}

    def initial_state(self, batch: int) -> dict:
        return {"node": tf.zeros([batch], tf.int32)}

    def log_prob(self, tokens: Sequence[int], eos: bool = True) -> np.float32:
        """float32 sum of log-probabilities, accumulated in decoding order."""
        total, node = np.float32(0.0), self.next[0, BOS]
        for token in [*tokens, EOS] if eos else tokens:
            total = np.float32(total + self.log_probs[node, token])
            node = self.next[node, token]
        return total


class HashModel:
    """Random prefix-dependent log-probs: state h' = hash(h, token) indexes a random table."""

    def __init__(self, seed: int, buckets: int = 101) -> None:
        rng = np.random.default_rng(seed)
        logits = rng.normal(size=[buckets, VOCAB]) * 2.0
        logits[:, [PAD, BOS]] = -np.inf  # never generated, as with a real model
        self.table = tf.nn.log_softmax(logits.astype(np.float32))  # [bucket, vocab]
        self.buckets = buckets

    def __call__(self, tokens: tf.Tensor, state: dict) -> tuple[tf.Tensor, dict]:
        h = (state["h"] * 31 + tokens + 7) % self.buckets  # [N]
        # "trace" has another rank and dtype and must be tiled and gathered alike.
        trace = state["trace"] * 0.5 + tf.cast(tokens, tf.float32)[:, None]  # [N, 2]
        return tf.gather(self.table, h), {"h": h, "trace": trace}

    def logits(self, tokens: tf.Tensor, state: dict) -> tuple[tf.Tensor, dict]:
        """The same step unnormalized: each row's log-probs shifted by its own constant."""
        log_probs, state = self(tokens, state)
        return log_probs + 3.0 * tf.cast(state["h"] % 5, tf.float32)[:, None], state

    @staticmethod
    def initial_state(h: tf.Tensor) -> dict:
        return {"h": h, "trace": tf.zeros([tf.shape(h)[0], 2])}


def numpy(result: DecodeResult) -> tuple[np.ndarray, ...]:
    return tuple(t.numpy() for t in result)


def assert_results_equal(a: DecodeResult, b: DecodeResult) -> None:
    for x, y in zip(numpy(a), numpy(b), strict=True):
        np.testing.assert_array_equal(x, y)


def assert_results_close(got: DecodeResult, expected: DecodeResult, tol: float) -> None:
    """The same tokens and lengths, log-probs and scores within `tol` (float rounding)."""
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    np.testing.assert_array_equal(got.lengths, expected.lengths)
    np.testing.assert_allclose(got.log_probs, expected.log_probs, rtol=tol, atol=tol)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=tol, atol=tol)


def test_greedy_follows_argmax_and_stops_at_eos():
    model = TreeModel({(): {A: 0.6, B: 0.3}, (A,): {C: 0.7, EOS: 0.2}, (A, C): {EOS: 0.8, D: 0.1}})
    tokens, lengths, log_probs, scores = numpy(greedy_search(model, model.initial_state(1), [10]))
    np.testing.assert_array_equal(tokens, [[[A, C]]])
    np.testing.assert_array_equal(lengths, [[2]])
    assert log_probs[0, 0] == model.log_prob([A, C])
    np.testing.assert_allclose(log_probs, [[np.log(0.6 * 0.7 * 0.8)]], rtol=1e-6)
    np.testing.assert_array_equal(scores, log_probs)
    assert model.calls == 3  # stopped at EOS, long before max_length


@pytest.mark.parametrize("beam_size", [2, 3])
def test_beam_finds_better_sequence_than_greedy(beam_size):
    # Greedy takes A (0.5), whose continuations are weak; B (0.4) leads to a likely sentence.
    spec = {(): {A: 0.5, B: 0.4}, (A,): {C: 0.4, D: 0.3, EOS: 0.2}, (B,): {C: 0.9}}
    model = TreeModel(spec, default={EOS: 0.9})
    greedy = greedy_search(model, model.initial_state(1), [10])
    np.testing.assert_array_equal(greedy.tokens, [[[A, C]]])
    np.testing.assert_allclose(greedy.log_probs, [[np.log(0.5 * 0.4 * 0.9)]], rtol=1e-6)

    beam = beam_search(model, model.initial_state(1), [10], beam_size=beam_size)
    np.testing.assert_array_equal(beam.tokens, [[[B, C]]])
    np.testing.assert_array_equal(beam.lengths, [[2]])
    assert beam.log_probs.numpy()[0, 0] == model.log_prob([B, C])
    np.testing.assert_allclose(beam.log_probs, [[np.log(0.4 * 0.9 * 0.9)]], rtol=1e-6)


def test_n_best_order_and_eos_handling():
    model = TreeModel({(): {A: 0.5, B: 0.3, C: 0.15}, (B,): {D: 0.95}}, default={EOS: 0.9})
    result = beam_search(model, model.initial_state(1), [10], beam_size=3, n_best=3)
    tokens, lengths, log_probs, scores = numpy(result)
    # A finishes at step 2 while B D keeps growing: A must stay one token, padded with 0.
    np.testing.assert_array_equal(tokens, [[[A, PAD], [B, D], [C, PAD]]])
    np.testing.assert_array_equal(lengths, [[1, 2, 1]])
    expected = [model.log_prob([A]), model.log_prob([B, D]), model.log_prob([C])]
    np.testing.assert_array_equal(log_probs, [expected])
    np.testing.assert_allclose(expected, np.log([0.45, 0.3 * 0.95 * 0.9, 0.15 * 0.9]), rtol=1e-6)
    np.testing.assert_array_equal(scores, log_probs)  # alpha = 0
    assert np.all(np.diff(scores[0]) < 0)
    assert model.calls == 3  # stopped once beam_size hypotheses were finished


def test_poor_finished_hypotheses_do_not_cut_off_a_better_live_one():
    # With k = 2, two unlikely EOS candidates are finished within the first two steps while
    # the likely A C keeps growing. Stopping at "k finished" would return A (-2.4); the live
    # hypothesis is far better and must win.
    spec = {(): {A: 0.9, EOS: 0.05, B: 0.05}, (A,): {C: 0.9, EOS: 0.09}, (A, C): {EOS: 0.99}}
    model = TreeModel(spec, default={EOS: 0.99})
    beam = beam_search(model, model.initial_state(1), [10], beam_size=2)
    np.testing.assert_array_equal(beam.tokens, [[[A, C]]])
    assert beam.log_probs.numpy()[0, 0] == model.log_prob([A, C])
    greedy = greedy_search(model, model.initial_state(1), [10])
    assert beam.log_probs.numpy()[0, 0] >= greedy.log_probs.numpy()[0, 0]


def long_vs_short_model() -> tuple[TreeModel, list[int]]:
    """A (0.6) then EOS (0.9) against B (0.4) then 7 near-certain tokens and EOS."""
    long = [B, C, D, C, D, C, D, C]
    spec = {(): {A: 0.6, B: 0.4}, (A,): {EOS: 0.9}}
    for i in range(1, len(long)):
        spec[tuple(long[:i])] = {long[i]: 0.99, EOS: 1e-6}
    spec[tuple(long)] = {EOS: 0.99}
    return TreeModel(spec), long


def test_length_penalty_changes_the_winner():
    model, long = long_vs_short_model()
    plain = beam_search(model, model.initial_state(1), [12], beam_size=2)
    np.testing.assert_array_equal(plain.tokens, [[[A]]])
    np.testing.assert_array_equal(plain.scores, [[model.log_prob([A])]])
    # No live hypothesis (B C: 0.396) can beat the finished A (0.54) once alpha = 0.
    assert model.calls == 2

    # With alpha = 1 B C can still win (its bound is -0.93 / penalty(12)): the search goes on.
    best = beam_search(model, model.initial_state(1), [12], beam_size=2, length_penalty=1.0)
    np.testing.assert_array_equal(best.tokens, [[long]])

    result = beam_search(model, model.initial_state(1), [12], 2, length_penalty=1.0, n_best=2)
    tokens, lengths, log_probs, scores = numpy(result)
    np.testing.assert_array_equal(tokens, [[long, [A] + [PAD] * 7]])
    np.testing.assert_array_equal(lengths, [[8, 1]])
    np.testing.assert_array_equal(log_probs, [[model.log_prob(long), model.log_prob([A])]])
    # GNMT: ((5 + len) / 6) ** alpha with len counting EOS.
    np.testing.assert_allclose(scores, [log_probs[0] / [(5 + 9) / 6, (5 + 2) / 6]], rtol=1e-6)
    assert log_probs[0, 0] < log_probs[0, 1] and scores[0, 0] > scores[0, 1]


def test_never_emitting_eos_stops_at_max_length():
    model = TreeModel({}, default={A: 0.5, B: 0.3, C: 0.1999, EOS: 1e-9})
    greedy = greedy_search(model, model.initial_state(1), [4])
    np.testing.assert_array_equal(greedy.tokens, [[[A, A, A, A]]])
    np.testing.assert_array_equal(greedy.lengths, [[4]])
    assert greedy.log_probs.numpy()[0, 0] == model.log_prob([A] * 4, eos=False)
    assert model.calls == 4

    beam = beam_search(model, model.initial_state(1), [4], beam_size=3, n_best=3)
    tokens, lengths, log_probs, scores = numpy(beam)
    np.testing.assert_array_equal(lengths, [[4, 4, 4]])
    assert np.all(tokens[0] >= A) and len({tuple(t) for t in tokens[0]}) == 3
    np.testing.assert_array_equal(tokens[0, 0], [A] * 4)
    assert log_probs[0, 0] == model.log_prob([A] * 4, eos=False)
    assert np.all(np.diff(scores[0]) <= 0)


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_per_sentence_max_lengths(search):
    model = TreeModel({}, default={A: 0.5, B: 0.3, C: 0.1999, EOS: 1e-9})
    max_lengths = tf.constant([2, 5, 0, 1])
    if search == "greedy":
        result = greedy_search(model, model.initial_state(4), max_lengths)
    else:
        result = beam_search(model, model.initial_state(4), max_lengths, beam_size=2)
    tokens, lengths, log_probs, _ = numpy(result)
    np.testing.assert_array_equal(lengths, [[2], [5], [0], [1]])
    expected = np.zeros([4, 1, 5], np.int32)
    for i, n in enumerate([2, 5, 0, 1]):
        expected[i, 0, :n] = A
    np.testing.assert_array_equal(tokens, expected)
    assert log_probs[2, 0] == 0.0  # max_length 0: the empty hypothesis, nothing decoded
    assert log_probs[1, 0] == model.log_prob([A] * 5, eos=False)


def random_batch(seed: int, batch: int = 5) -> tuple[tf.Tensor, tf.Tensor]:
    rng = np.random.default_rng(seed + 100)
    h = tf.constant(rng.integers(0, 101, batch), tf.int32)
    max_lengths = tf.constant(rng.integers(0, 10, batch), tf.int32)
    return h, max_lengths


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_beam_size_one_equals_greedy(seed):
    model = HashModel(seed)
    h, max_lengths = random_batch(seed, batch=8)
    for alpha in [0.0, 0.6, 2.0]:
        greedy = greedy_search(model, model.initial_state(h), max_lengths, length_penalty=alpha)
        beam = beam_search(model, model.initial_state(h), max_lengths, 1, length_penalty=alpha)
        assert_results_equal(greedy, beam)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_from_logits_equals_greedy_from_log_probs(seed):
    model = HashModel(seed)
    h, max_lengths = random_batch(seed, batch=8)
    for alpha in [0.0, 0.6]:
        expected = greedy_search(model, model.initial_state(h), max_lengths, length_penalty=alpha)
        got = greedy_search(
            model.logits, model.initial_state(h), max_lengths, length_penalty=alpha, logits=True
        )
        assert_results_close(got, expected, 1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_from_logits_equals_beam_from_log_probs(seed):
    model = HashModel(seed)
    h, max_lengths = random_batch(seed, batch=6)
    for k, n_best, alpha in [(2, 2, 0.6), (3, 1, 0.0), (5, 3, 1.0)]:
        expected = beam_search(model, model.initial_state(h), max_lengths, k, alpha, n_best)
        got = beam_search(
            model.logits, model.initial_state(h), max_lengths, k, alpha, n_best, logits=True
        )
        assert_results_close(got, expected, 1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_compacting_greedy_decodes_the_same_on_fewer_rows(seed):
    model = HashModel(seed)
    row_steps = tf.Variable(0)

    def counted(tokens, state):  # the rows the model is asked for, summed over the steps
        row_steps.assign_add(tf.shape(tokens)[0])
        return model(tokens, state)

    h, max_lengths = random_batch(seed, batch=16)
    results, counts = {}, {}
    for compact in (0.0, 0.5, 1.0):
        for logits in (False, True):
            row_steps.assign(0)
            search = tf.function(
                lambda h, logits=logits, compact=compact: greedy_search(
                    counted,
                    model.initial_state(h),
                    max_lengths,
                    length_penalty=0.6,
                    logits=logits,
                    compact=compact,
                )
            )
            results[compact, logits] = search(h)
            counts[compact, logits] = int(row_steps.numpy())
    for logits in (False, True):
        for compact in (0.5, 1.0):
            # a kernel's rounding of a row may depend on how many rows it is given
            assert_results_close(results[compact, logits], results[0.0, logits], 1e-6)
        # finished rows left the loop: fewer rows decoded, the more so the sooner
        assert counts[1.0, logits] < counts[0.5, logits] < counts[0.0, logits]


@pytest.mark.parametrize("seed", [0, 1])
def test_compacting_beam_search_decodes_the_same_on_fewer_rows(seed):
    model = HashModel(seed)
    row_steps = tf.Variable(0)

    def salted(tokens, state):  # reads a per-sentence salt from the fixed part of its state
        row_steps.assign_add(tf.shape(tokens)[0])
        carry, fixed = state
        log_probs, new = model(tokens, {**carry, "h": (carry["h"] + fixed) % model.buckets})
        return log_probs, (new, fixed)

    def reordered(tokens, state):  # the same with the salt in the state the beams reorder
        carry = dict(state)
        salt = carry.pop("salt")
        log_probs, (new, _) = salted(tokens, (carry, salt))
        return log_probs, {**new, "salt": salt}

    h, max_lengths = random_batch(seed, batch=16)
    salt = tf.range(16) * 13
    for k, n_best, alpha in [(2, 2, 0.6), (4, 3, 1.0)]:
        row_steps.assign(0)
        state = {**model.initial_state(h), "salt": salt}
        expected = beam_search(reordered, state, max_lengths, k, alpha, n_best)
        counts = [int(row_steps.numpy())]
        for compact in (0.0, 0.5, 1.0):
            row_steps.assign(0)
            search = tf.function(
                lambda h, compact=compact, k=k, n_best=n_best, alpha=alpha: beam_search(
                    salted,
                    (model.initial_state(h), salt),
                    max_lengths,
                    k,
                    alpha,
                    n_best,
                    fixed=True,
                    compact=compact,
                )
            )
            # a kernel's rounding of a row may depend on how many rows it is given
            assert_results_close(search(h), expected, 1e-6)
            counts.append(int(row_steps.numpy()))
        # the fixed part unreordered decodes the same; finished sentences left the loop
        assert counts[1] == counts[0]
        assert counts[3] < counts[2] < counts[1]


def test_batch_invariance():
    model = HashModel(seed=7)
    h, max_lengths = random_batch(seed=7, batch=4)

    def decode(h: tf.Tensor, max_lengths: tf.Tensor) -> tuple[np.ndarray, ...]:
        result = beam_search(model, model.initial_state(h), max_lengths, 4, 0.8, n_best=3)
        return numpy(result)

    batched = decode(h, max_lengths)
    for i in range(4):
        alone = decode(h[i : i + 1], max_lengths[i : i + 1])
        width = alone[0].shape[-1]
        np.testing.assert_array_equal(batched[0][i, :, :width], alone[0][0])
        assert not batched[0][i, :, width:].any()
        for got, want in zip(batched[1:], alone[1:], strict=True):
            np.testing.assert_array_equal(got[i], want[0])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_first_hypotheses_do_not_depend_on_n_best(seed):
    # Asking for more hypotheses may only add ones after those a smaller n_best returns
    # (an export serves n_best=2 by slicing its n_best=5 decoder).
    model = HashModel(seed)
    h, max_lengths = random_batch(seed, batch=8)
    for alpha in [0.0, 0.6, 2.0]:
        results = [
            numpy(beam_search(model, model.initial_state(h), max_lengths, 5, alpha, n_best=n))
            for n in (1, 2, 5)
        ]
        for n, smaller in zip((1, 2), results, strict=False):
            tokens, lengths, log_probs, scores = results[-1]
            width = smaller[0].shape[-1]
            np.testing.assert_array_equal(smaller[0], tokens[:, :n, :width])
            assert not tokens[:, :n, width:].any()
            for got, want in zip(smaller[1:], (lengths, log_probs, scores), strict=True):
                np.testing.assert_array_equal(got, want[:, :n])


@pytest.mark.parametrize("autograph", [True, False])
def test_runs_in_tf_function_with_dynamic_batch(autograph):
    model = HashModel(seed=3)
    spec = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=spec, autograph=autograph)
    def decode(h: tf.Tensor, max_lengths: tf.Tensor) -> tuple[DecodeResult, DecodeResult]:
        state = model.initial_state(h)
        return (
            greedy_search(model, state, max_lengths),
            beam_search(model, state, max_lengths, beam_size=3, length_penalty=0.6, n_best=2),
        )

    for batch in [3, 5]:
        h, max_lengths = random_batch(seed=batch, batch=batch)
        graph_greedy, graph_beam = decode(h, max_lengths)
        state = model.initial_state(h)
        assert_results_equal(graph_greedy, greedy_search(model, state, max_lengths))
        assert_results_equal(graph_beam, beam_search(model, state, max_lengths, 3, 0.6, 2))
    assert decode.experimental_get_tracing_count() == 1


@pytest.mark.parametrize(("n", "k"), [(3, 2), (10, 10), (64, 5), (200, 10), (40000, 10)])
def test_top_k_is_exactly_tf_top_k(n, k):
    # Beam search's two-pass top-k must pick the same values and indices as tf.math.top_k,
    # ties (lowest index first) and -inf rows (dead beams at the first step) included.
    rng = np.random.default_rng(n + k)
    values = rng.normal(size=[6, n]).round(1).astype(np.float32)  # many ties
    values[1] = -np.inf
    values[2, : n // 2] = -np.inf
    values[3] = values[3].max()  # all equal
    values[4, -1] = 50.0  # the maximum in the last (padded) block
    want_values, want_index = tf.math.top_k(values, k)
    got_values, got_index = _top_k(tf.constant(values), k)
    np.testing.assert_array_equal(got_values, want_values)
    np.testing.assert_array_equal(got_index, want_index)


def test_invalid_sizes():
    model = TreeModel({})
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, model.initial_state(1), [3], beam_size=0)
    with pytest.raises(ValueError, match="n_best"):
        beam_search(model, model.initial_state(1), [3], beam_size=2, n_best=3)


def test_mean_step_decodes_with_the_mean_of_the_members_log_probs():
    # Each member alone starts with A or C; their mean prefers B, which both rank second.
    first = TreeModel({(): {A: 0.5, B: 0.4, C: 0.1}, (A,): {D: 0.5}}, default={EOS: 0.9})
    second = TreeModel({(): {C: 0.5, B: 0.4, A: 0.1}}, default={EOS: 0.9})
    members = (first, second)
    ensemble = mean_step(members)
    state = tuple(m.initial_state(1) for m in members)
    for model, alone in ((first, [A, D]), (second, [C])):
        result = greedy_search(model, model.initial_state(1), [5])
        np.testing.assert_array_equal(result.tokens, [[alone]])

    greedy = greedy_search(ensemble, state, [5])
    np.testing.assert_array_equal(greedy.tokens, [[[B]]])
    want = np.mean([m.log_prob([B]) for m in members])
    np.testing.assert_allclose(greedy.log_probs.numpy()[0, 0], want, rtol=1e-6)

    # Beam search reorders the tuple of member states like any state: every hypothesis scores
    # the mean of what each member gives its tokens.
    beam = beam_search(ensemble, state, [5], beam_size=3, n_best=3)
    for k in range(3):
        tokens = beam.tokens.numpy()[0, k, : beam.lengths.numpy()[0, k]].tolist()
        want = np.mean([m.log_prob(tokens) for m in members])
        np.testing.assert_allclose(beam.log_probs.numpy()[0, k], want, rtol=1e-6)
    assert beam.tokens.numpy()[0, 0, :1].tolist() == [B]


def test_mean_step_of_one_model_with_itself_is_that_model():
    model = HashModel(seed=5)
    h, max_lengths = random_batch(seed=5, batch=4)
    pair = mean_step([model, model])
    state = model.initial_state(h)
    assert_results_equal(
        beam_search(pair, (state, state), max_lengths, 3, 0.6, 2),
        beam_search(model, state, max_lengths, 3, 0.6, 2),
    )
    with pytest.raises(ValueError, match="at least one"):
        mean_step([])
