"""Greedy and beam search: pure TensorFlow functions over a step callback.

The model is a callback, `step_fn(tokens, state) -> (log_probs, new_state)`, so the search knows
nothing about layers and tests can drive it with scripted tables; `mean_step` makes one callback
of several (an ensemble). Every loop is an explicit `tf.while_loop` over a NamedTuple state, so
the functions run eagerly, inside `tf.function` and inside `tf.function(autograph=False)` (what
`keras.export.ExportArchive` uses), with a dynamic batch size and vocabulary.

Conventions shared by both searches:

- `max_lengths[b]` is the maximum number of decoding steps of sentence `b`, i.e. of output
  tokens counting EOS. A hypothesis that ends with EOS has at most `max_length - 1` real tokens;
  one that is cut at the limit has exactly `max_length` and no EOS. The loop runs at most
  `max(max_lengths)` steps. A sentence with `max_length <= 0` gets the empty hypothesis.
- Results hold no BOS or EOS, are right-padded with 0 and trimmed to the longest hypothesis
  returned. `log_probs` sums the token log-probabilities, EOS included when it was emitted;
  `scores` divides them by the GNMT length penalty ((5 + len) / 6) ** alpha, where len counts EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from translator.constants import TOP_K_BLOCK

StepFn = Callable[[tf.Tensor, Any], tuple[tf.Tensor, Any]]
"""step_fn(tokens [N] int32, state) -> (log_probs [N, vocab] float32, new_state).

`state` is any tf.nest structure whose tensors all have leading dimension N and keep their
shape and dtype across steps. log_probs must be <= 0 (beam search's early stop relies on it) and
vocab >= 2.
"""

_NEG_INF = float("-inf")


class DecodeResult(NamedTuple):
    """Decoded hypotheses, best first (greedy search returns n_best = 1)."""

    tokens: tf.Tensor  # [batch, n_best, time] int32, no BOS/EOS, right-padded with 0
    lengths: tf.Tensor  # [batch, n_best] int32, real tokens
    log_probs: tf.Tensor  # [batch, n_best] float32, -inf where fewer hypotheses were found
    scores: tf.Tensor  # [batch, n_best] float32, log_probs / length penalty


class _Finished(NamedTuple):
    """Finished hypotheses of a beam search, sorted by score; empty slots score -inf."""

    tokens: tf.Tensor  # [batch, beam, time] int32
    lengths: tf.Tensor  # [batch, beam] int32
    log_probs: tf.Tensor  # [batch, beam] float32
    scores: tf.Tensor  # [batch, beam] float32


class _BeamState(NamedTuple):
    """Loop state of `beam_search` (a NamedTuple because tf.while_loop needs a tf.nest type)."""

    step: tf.Tensor  # [] int32, tokens generated so far by every live hypothesis
    live_tokens: tf.Tensor  # [batch, beam, time] int32
    last_tokens: tf.Tensor  # [batch, beam] int32, next input of step_fn (BOS at step 0)
    live_log_probs: tf.Tensor  # [batch, beam] float32, sorted descending
    model_state: Any  # tf.nest of [batch * beam, ...]
    finished: _Finished
    done: tf.Tensor  # [batch] bool, the sentence's search is over
    # with compact, the loop's sentences are some of the batch's (`rows`), and the finished
    # hypotheses of those that left are kept for the whole batch (`kept`)
    rows: Any = ()  # [batch] int32, each loop sentence's sentence of the batch
    max_lengths: Any = ()  # [batch] int32
    max_penalty: Any = ()  # [batch] float32
    kept: Any = ()  # a _Finished of [whole batch, ...]


class _GreedyState(NamedTuple):
    """Loop state of `greedy_search`. With `compact`, the loop's rows are some of the batch's
    (`rows`), and what they decided is kept for the whole batch (`kept`)."""

    step: tf.Tensor  # [] int32
    tokens: tf.Tensor  # [batch, time] int32 (of the whole batch)
    last_tokens: tf.Tensor  # [rows] int32
    log_probs: tf.Tensor  # [rows] float32
    lengths: tf.Tensor  # [rows] int32
    ended: tf.Tensor  # [rows] bool, EOS was emitted
    done: tf.Tensor  # [rows] bool
    model_state: Any  # tf.nest of [rows, ...]
    rows: Any = ()  # with compact: [rows] int32, each loop row's row of the batch
    max_lengths: Any = ()  # with compact: [rows] int32
    kept: Any = ()  # with compact: (log_probs, lengths, ended), each [batch]


def _length_penalty(length: tf.Tensor | int, alpha: float) -> tf.Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha; exactly 1 when alpha is 0."""
    if alpha == 0.0:
        return tf.ones_like(tf.cast(length, tf.float32))
    # float32 pow differs by an ulp between the vectorised and scalar kernels, which would
    # make scores depend on tensor shapes (greedy vs beam 1, batch size); float64 rounded to
    # float32 does not.
    length = tf.cast(length, tf.float64)
    return tf.cast(((5.0 + length) / 6.0) ** alpha, tf.float32)


def _loop_shapes(state: NamedTuple) -> NamedTuple:
    """Shape invariants: any shape for our tensors, any leading dim for the model state.

    The leading dimension is relaxed so a step_fn whose outputs lose the static batch size
    (common with Keras layers) does not break the loop.
    """
    shapes = tf.nest.map_structure(lambda t: tf.TensorShape([None] * t.shape.rank), state)
    model_shapes = tf.nest.map_structure(
        lambda t: tf.TensorShape([None]).concatenate(t.shape[1:]), state.model_state
    )
    return shapes._replace(step=tf.TensorShape([]), model_state=model_shapes)


def _prepare_lengths(max_lengths: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Returns max_lengths as int32 [batch], the batch size and the number of loop steps."""
    max_lengths = tf.cast(tf.convert_to_tensor(max_lengths), tf.int32)
    # reduce_max of an empty batch is INT_MIN; clamp so buffers get a valid size.
    max_steps = tf.maximum(tf.reduce_max(max_lengths), 0)
    return max_lengths, tf.shape(max_lengths)[0], max_steps


def _top_k(values: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
    """`tf.math.top_k(values, k)` for `values` `[batch, n]`, n >= k, in two passes.

    TensorFlow's CPU top-k over a beam search's candidates (`[batch, beam * vocab]`) took about
    a quarter of a beam step. Here each row is cut into blocks of `TOP_K_BLOCK` values, the k blocks
    with the largest maxima are found (ties: the lower block), and the top k is taken among
    their values only, kept in index order. The result is exactly `tf.math.top_k`'s, ties
    (lower index first) included: a value outside the chosen blocks has k values from k other
    blocks ranked before it (each block's maximum, larger, or equal with a lower index).

    Returns:
        `(top values [batch, k], their indices [batch, k] int32)`, best first.
    """
    batch, n = tf.shape(values)[0], tf.shape(values)[1]
    padded = tf.pad(values, [[0, 0], [0, (-n) % TOP_K_BLOCK]], constant_values=_NEG_INF)
    blocks = tf.reshape(padded, [batch, -1, TOP_K_BLOCK])  # padding ranks last: highest indices
    count = tf.minimum(k, tf.shape(blocks)[1])
    _, chosen = tf.math.top_k(tf.reduce_max(blocks, -1), count)
    chosen = tf.sort(chosen, axis=-1)  # index order, so top_k's ties still go to the lowest
    candidates = tf.reshape(tf.gather(blocks, chosen, batch_dims=1), [batch, -1])
    top, position = tf.math.top_k(candidates, k)
    block = tf.gather(chosen, position // TOP_K_BLOCK, batch_dims=1)
    return top, block * TOP_K_BLOCK + position % TOP_K_BLOCK


def _trim(tokens: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    """Drops time steps past the longest hypothesis. tokens: [batch, n, time]."""
    return tokens[:, :, : tf.maximum(tf.reduce_max(lengths), 0)]


def greedy_search(
    step_fn: StepFn,
    initial_state: Any,
    max_lengths: tf.Tensor,
    bos_id: int = 2,
    eos_id: int = 3,
    length_penalty: float = 0.0,
    logits: bool = False,
    compact: float = 0.0,
) -> DecodeResult:
    """Decodes the most probable token at every step until EOS or the maximum length.

    Args:
        step_fn: the model, see `StepFn`; with `logits`, it returns unnormalized float32
            logits instead of log-probabilities.
        initial_state: tf.nest of [batch, ...] tensors, the decoder state before BOS.
        max_lengths: [batch] int, maximum decoding steps per sentence (EOS counted).
        bos_id: first input token.
        eos_id: token that ends a hypothesis.
        length_penalty: alpha of the GNMT penalty, used only for `scores`.
        logits: take the highest logit and only its log-probability, `log(softmax)` at that
            token: one softmax per row instead of a log-softmax and a sum over the whole
            vocabulary (a quarter of a bfloat16 step's time at 64 rows, RESULTS.md). The same
            tokens up to ties within float rounding, the log-probabilities within it.
        compact: when at most this fraction of the loop's rows still decode, the finished
            ones leave the loop (every tensor of the state is gathered down to the others),
            so later steps run on fewer rows; 0: never. The state must then hold every
            per-row tensor the step reads (`Seq2Seq.search_step(fixed_in_state=True)`).
            The same tokens; scores within float rounding (a kernel's rounding of a row can
            depend on how many rows it is given).

    Returns:
        A DecodeResult with n_best = 1; without `logits`, equal, token for token, to
        `beam_search` with beam 1.
    """
    max_lengths, batch, max_steps = _prepare_lengths(max_lengths)
    positions = tf.range(max_steps)  # [time]

    def body(s: _GreedyState) -> tuple[_GreedyState]:
        scores, model_state = step_fn(s.last_tokens, s.model_state)  # [rows, vocab]
        if logits:
            token = tf.math.top_k(scores, 1)[1][:, 0]  # [rows]
            chosen = tf.gather(tf.nn.softmax(scores), token, batch_dims=1)
            best = s.log_probs + tf.math.log(chosen)
        else:
            # Rank cumulative scores with top_k, exactly as beam_search does, so that rounding
            # and ties (lowest id first) resolve identically.
            best, token = tf.math.top_k(s.log_probs[:, None] + scores, 1)
            best, token = best[:, 0], token[:, 0]  # [rows]
        active = ~s.done
        is_eos = tf.equal(token, eos_id)
        grow = active & ~is_eos
        ended = s.ended | (active & is_eos)
        limits = s.max_lengths if compact else max_lengths
        new = s._replace(
            step=s.step + 1,
            last_tokens=token,
            log_probs=tf.where(active, best, s.log_probs),
            lengths=s.lengths + tf.cast(grow, tf.int32),
            ended=ended,
            done=s.done | ended | (s.step + 1 >= limits),
            model_state=model_state,
        )
        if not compact:
            write = grow[:, None] & tf.equal(positions, s.step)[None, :]  # [batch, time]
            return (new._replace(tokens=tf.where(write, token[:, None], s.tokens)),)
        at = tf.stack([s.rows, tf.fill(tf.shape(s.rows), s.step)], 1)  # unwritten cells are 0
        decided = (new.log_probs, new.lengths, new.ended)
        new = new._replace(
            tokens=tf.tensor_scatter_nd_update(s.tokens, at, tf.where(grow, token, 0)),
            kept=tuple(
                tf.tensor_scatter_nd_update(whole, s.rows[:, None], values)
                for whole, values in zip(s.kept, decided, strict=True)
            ),
        )
        rows = tf.cast(tf.shape(new.done)[0], tf.float32)
        live = tf.reduce_sum(tf.cast(~new.done, tf.int32))
        shrink = (live > 0) & (tf.cast(live, tf.float32) <= tf.minimum(compact * rows, rows - 1))
        return (tf.cond(shrink, lambda: _drop_finished(new), lambda: new),)

    init = _GreedyState(
        step=tf.constant(0),
        tokens=tf.zeros([batch, max_steps], tf.int32),
        last_tokens=tf.fill([batch], tf.constant(bos_id, tf.int32)),
        log_probs=tf.zeros([batch], tf.float32),
        lengths=tf.zeros([batch], tf.int32),
        ended=tf.zeros([batch], tf.bool),
        done=max_lengths <= 0,
        model_state=initial_state,
    )
    if compact:
        init = init._replace(
            rows=tf.range(batch),
            max_lengths=max_lengths,
            kept=(init.log_probs, init.lengths, init.ended),
        )
    (final,) = tf.while_loop(
        lambda s: (s.step < max_steps) & ~tf.reduce_all(s.done),
        body,
        (init,),
        shape_invariants=(_loop_shapes(init),),
    )
    if compact:
        log_probs, lengths, ended = final.kept
    else:
        log_probs, lengths, ended = final.log_probs, final.lengths, final.ended
    penalty = _length_penalty(lengths + tf.cast(ended, tf.int32), length_penalty)
    return DecodeResult(
        tokens=_trim(final.tokens[:, None, :], lengths),
        lengths=lengths[:, None],
        log_probs=log_probs[:, None],
        scores=(log_probs / penalty)[:, None],
    )


def _drop_finished(s: _GreedyState) -> _GreedyState:
    """`s` with only the rows still decoding (the whole batch's `tokens` and `kept` stay)."""
    live = tf.where(~s.done)[:, 0]
    per_row = s._replace(step=(), tokens=(), kept=())
    gathered = tf.nest.map_structure(lambda t: tf.gather(t, live), per_row)
    return gathered._replace(step=s.step, tokens=s.tokens, kept=s.kept)


def beam_search(
    step_fn: StepFn,
    initial_state: Any,
    max_lengths: tf.Tensor,
    beam_size: int,
    length_penalty: float = 0.0,
    n_best: int = 1,
    bos_id: int = 2,
    eos_id: int = 3,
    logits: bool = False,
    fixed: bool = False,
    compact: float = 0.0,
) -> DecodeResult:
    """Beam search with finished hypotheses kept aside and the GNMT length penalty.

    Each step takes the top 2k candidates by log-probability; an EOS candidate is finished only
    if it ranks within the top k, and the live beam continues with the top k non-EOS candidates
    (fairseq's rule, which makes beam 1 identical to greedy search). A sentence stops when no
    live hypothesis can beat its n_best-th finished one (an upper bound over all lengths), when
    it has k finished hypotheses and the best live one does not score better than any of them
    at the current length, or at its maximum length, where live hypotheses are finished as they
    are. The first n hypotheses returned are the same for every n_best >= n.

    Args:
        step_fn: the model, see `StepFn`; called on batch * beam_size rows.
        initial_state: tf.nest of [batch, ...] tensors, tiled to [batch * beam_size, ...].
        max_lengths: [batch] int, maximum decoding steps per sentence (EOS counted).
        beam_size: k >= 1.
        length_penalty: alpha >= 0 of the GNMT penalty; 0 ranks by log-probability.
        n_best: hypotheses returned per sentence, 1 <= n_best <= beam_size.
        bos_id: first input token.
        eos_id: token that ends a hypothesis.
        logits: `step_fn` returns unnormalized float32 logits. Each row's top 2k tokens by
            logit are taken first (the top 2k candidates of a sentence are among them) and
            only their log-probabilities computed, `log(softmax)`: no log-softmax and no sum
            over the whole `[batch, beam * vocab]` (RESULTS.md). The same candidates up to
            ties within float rounding, their log-probabilities within it.
        fixed: `initial_state` is a pair `(state, fixed)`: `fixed` (e.g. the encoder's
            memory) is read by `step_fn` and returned unchanged. Its rows are tiled like the
            state's but never reordered between steps (a sentence's beams hold the same), so
            it can ride in the loop state at no cost per step (for `compact`).
        compact: when at most this fraction of the loop's sentences are still searched, the
            finished ones leave the loop (every tensor of the state, `fixed` too, is gathered
            down to the others), so later steps run on fewer rows; 0: never. `step_fn` must
            then read nothing per row that is not in its state. The same hypotheses; scores
            within float rounding (a kernel's rounding of a row can depend on how many rows
            it is given).

    Returns:
        A DecodeResult sorted by score; a sentence with fewer than n_best hypotheses found has
        its remaining slots empty with score -inf.

    Raises:
        ValueError: if beam_size < 1 or n_best is not within [1, beam_size].
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be within [1, beam_size={beam_size}], got {n_best}")
    k, alpha = beam_size, float(length_penalty)
    max_lengths, batch, max_steps = _prepare_lengths(max_lengths)
    positions = tf.range(max_steps)  # [time]
    # A live hypothesis's score can at best keep its log-prob (<= 0) and reach the largest
    # penalty, so live_log_prob / penalty(max_length) bounds it (for alpha = 0 too).
    max_penalty = _length_penalty(max_lengths, alpha)  # [batch]

    def merge(
        old: _Finished,
        tokens: tf.Tensor,  # [batch, m, time]
        lengths: tf.Tensor,  # [batch, m]
        log_probs: tf.Tensor,  # [batch, m]
        penalty_length: tf.Tensor | int,  # [] tokens counted by the penalty (EOS included)
        valid: tf.Tensor,  # [batch, m] bool
    ) -> _Finished:
        """Adds the valid candidates to the k best finished hypotheses."""
        scores = log_probs / _length_penalty(penalty_length, alpha)
        valid = valid & (scores > _NEG_INF)  # never finish impossible (-inf) hypotheses
        new = _Finished(
            tokens=tf.where(valid[:, :, None], tokens, 0),
            lengths=tf.where(valid, lengths, 0),
            log_probs=tf.where(valid, log_probs, _NEG_INF),
            scores=tf.where(valid, scores, _NEG_INF),
        )
        both = tf.nest.map_structure(lambda a, b: tf.concat([a, b], axis=1), old, new)
        # top_k keeps the lower index first on ties, so older hypotheses win them.
        _, index = tf.math.top_k(both.scores, k)  # [batch, beam]
        return tf.nest.map_structure(lambda t: tf.gather(t, index, batch_dims=1), both)

    def body(s: _BeamState) -> tuple[_BeamState]:
        scores, model_state = step_fn(tf.reshape(s.last_tokens, [-1]), s.model_state)
        batch = tf.shape(s.done)[0]  # the loop's sentences
        limits, best_penalty = (
            (s.max_lengths, s.max_penalty) if compact else (max_lengths, max_penalty)
        )
        if logits:
            vocab = scores.shape[-1]
            m = 2 * k if vocab is None else min(2 * k, vocab)  # tokens kept per row
            _, row_tokens = _top_k(scores, m)  # [batch * beam, m]
            chosen = tf.gather(tf.nn.softmax(scores), row_tokens, batch_dims=1)
            candidates = s.live_log_probs[:, :, None] + tf.reshape(tf.math.log(chosen), [-1, k, m])
            top_log_probs, top_index = tf.math.top_k(tf.reshape(candidates, [-1, k * m]), 2 * k)
            parent = top_index // m  # [batch, 2 * beam]
            token = tf.gather(tf.reshape(row_tokens, [-1, k * m]), top_index, batch_dims=1)
        else:
            vocab = tf.shape(scores)[-1]
            candidates = s.live_log_probs[:, :, None] + tf.reshape(scores, [-1, k, vocab])
            top_log_probs, top_index = _top_k(tf.reshape(candidates, [-1, k * vocab]), 2 * k)
            parent, token = top_index // vocab, top_index % vocab  # [batch, 2 * beam]
        is_eos = tf.equal(token, eos_id)
        write = ~is_eos[:, :, None] & tf.equal(positions, s.step)[None, None, :]
        top_tokens = tf.where(  # [batch, 2 * beam, time]; EOS is not stored
            write, token[:, :, None], tf.gather(s.live_tokens, parent, batch_dims=1)
        )

        # Each parent yields at most one EOS candidate, so at least k of the 2k are not EOS;
        # keep the first k of those, in rank order.
        rank = tf.range(2 * k)[None, :]
        _, keep = tf.math.top_k(-tf.where(is_eos, rank + 2 * k, rank), k)  # [batch, beam]
        live_tokens = tf.gather(top_tokens, keep, batch_dims=1)
        live_log_probs = tf.gather(top_log_probs, keep, batch_dims=1)
        rows = tf.gather(parent, keep, batch_dims=1) + tf.range(batch)[:, None] * k
        reordered = model_state[0] if fixed else model_state
        reordered = tf.nest.map_structure(lambda t: tf.gather(t, tf.reshape(rows, [-1])), reordered)
        model_state = (reordered, s.model_state[1]) if fixed else reordered

        active = ~s.done  # finished sentences are frozen
        last = active & (s.step + 1 >= limits)  # [batch]
        finishing_eos = is_eos & (rank < k) & active[:, None]
        finished = merge(
            s.finished,
            tf.concat([top_tokens, live_tokens], axis=1),
            tf.concat([tf.fill(tf.shape(token), s.step), tf.fill(tf.shape(keep), s.step + 1)], 1),
            tf.concat([top_log_probs, live_log_probs], axis=1),
            s.step + 1,  # both EOS-finished and cut hypotheses span step + 1 tokens
            tf.concat([finishing_eos, tf.tile(last[:, None], [1, k])], axis=1),
        )
        found = tf.reduce_sum(tf.cast(finished.scores > _NEG_INF, tf.int32), axis=1)
        # Exact: no descendant of a live hypothesis can enter the n_best returned.
        hopeless = live_log_probs[:, 0] / best_penalty <= finished.scores[:, n_best - 1]
        # fairseq stops at k finished; we also require the best live hypothesis to score no
        # better than all k right now, so finished-but-poor EOS candidates cannot cut off a
        # much better live one (with k = 1 this still stops exactly where greedy stops). The
        # rule looks at all k finished, not the n_best returned, so the first n hypotheses do
        # not depend on n_best.
        current = live_log_probs[:, 0] / _length_penalty(s.step + 1, alpha)
        settled = (found >= k) & (current <= finished.scores[:, k - 1])
        done = s.done | last | (active & (settled | hopeless))
        new = s._replace(
            step=s.step + 1,
            live_tokens=live_tokens,
            last_tokens=tf.gather(token, keep, batch_dims=1),
            live_log_probs=live_log_probs,
            model_state=model_state,
            finished=finished,
            done=done,
        )
        if not compact:
            return (new,)
        sentences = tf.cast(batch, tf.float32)
        searched = tf.reduce_sum(tf.cast(~done, tf.int32))
        shrink = (searched > 0) & (
            tf.cast(searched, tf.float32) <= tf.minimum(compact * sentences, sentences - 1)
        )
        return (tf.cond(shrink, lambda: _drop_finished_sentences(new, k), lambda: new),)

    # Only beam 0 is alive at first: the k copies are identical and must not be expanded twice.
    live_log_probs = tf.tile(tf.constant([[0.0] + [_NEG_INF] * (k - 1)]), [batch, 1])
    live_tokens = tf.zeros([batch, k, max_steps], tf.int32)
    empty = _Finished(
        tokens=live_tokens,
        lengths=tf.zeros([batch, k], tf.int32),
        log_probs=tf.fill([batch, k], _NEG_INF),
        scores=tf.fill([batch, k], _NEG_INF),
    )
    # A sentence allowed no step gets the empty hypothesis, as in greedy_search.
    no_steps = max_lengths <= 0
    init = _BeamState(
        step=tf.constant(0),
        live_tokens=live_tokens,
        last_tokens=tf.fill([batch, k], tf.constant(bos_id, tf.int32)),
        live_log_probs=live_log_probs,
        model_state=tf.nest.map_structure(lambda t: tf.repeat(t, k, axis=0), initial_state),
        finished=merge(
            empty, live_tokens, empty.lengths, live_log_probs, 0, tf.tile(no_steps[:, None], [1, k])
        ),
        done=no_steps,
    )
    if compact:
        init = init._replace(
            rows=tf.range(batch), max_lengths=max_lengths, max_penalty=max_penalty, kept=empty
        )
    (final,) = tf.while_loop(
        lambda s: (s.step < max_steps) & ~tf.reduce_all(s.done),
        body,
        (init,),
        shape_invariants=(_loop_shapes(init),),
    )
    finished = _keep_finished(final) if compact else final.finished
    best = tf.nest.map_structure(lambda t: t[:, :n_best], finished)
    return DecodeResult(
        tokens=_trim(best.tokens, best.lengths),
        lengths=best.lengths,
        log_probs=best.log_probs,
        scores=best.scores,
    )


def _keep_finished(s: _BeamState) -> _Finished:
    """The whole batch's finished hypotheses: `s.kept` updated with the loop's sentences."""
    return tf.nest.map_structure(
        lambda whole, part: tf.tensor_scatter_nd_update(whole, s.rows[:, None], part),
        s.kept,
        s.finished,
    )


def _drop_finished_sentences(s: _BeamState, k: int) -> _BeamState:
    """`s` with only the sentences still searched, their finished hypotheses kept aside."""
    kept = _keep_finished(s)
    live = tf.where(~s.done)[:, 0]  # [sentences]
    live_rows = tf.reshape(live[:, None] * k + tf.range(k, dtype=live.dtype)[None, :], [-1])
    per_sentence = s._replace(step=(), model_state=(), kept=())
    gathered = tf.nest.map_structure(lambda t: tf.gather(t, live), per_sentence)
    model_state = tf.nest.map_structure(lambda t: tf.gather(t, live_rows), s.model_state)
    return gathered._replace(step=s.step, model_state=model_state, kept=kept)


def mean_step(step_fns: Sequence[StepFn]) -> StepFn:
    """An ensemble's step callback: the mean of the members' log-probabilities.

    The state of the returned `StepFn` is a tuple holding each member's state, so members may
    keep states of any structure and width; `greedy_search` and `beam_search` carry and
    reorder it like any other state. The mean of log-probabilities (the log of the geometric
    mean of the members' distributions, not renormalised) is <= 0 as `StepFn` requires. All
    members must share the vocabulary (the same ids mean the same pieces).

    Args:
        step_fns: the members' step callbacks, at least one.

    Raises:
        ValueError: `step_fns` is empty.
    """
    step_fns = tuple(step_fns)
    if not step_fns:
        raise ValueError("an ensemble needs at least one step function")
    count = float(len(step_fns))

    def step(tokens: tf.Tensor, state: tuple) -> tuple[tf.Tensor, tuple]:
        outputs = [fn(tokens, s) for fn, s in zip(step_fns, state, strict=True)]
        total = tf.add_n([tf.cast(log_probs, tf.float32) for log_probs, _ in outputs])
        return total / count, tuple(new for _, new in outputs)  # [N, vocab]

    return step
