"""The `attention` signature of an attention model's export: a heatmap of one translation.

In graph, for a [batch] of sentences: the greedy translation (the export's greedy decode
function), then the model's teacher-forced `attention_weights` over the source and that
translation tokenized again, exactly as `introspect.attention_map(translator, text,
beam_size=1)` computes them in Python. Outputs (padded to the longest sentence of the batch;
`source_length` and `target_length` say how much of each row is real):

- `translation` [batch] string: the greedy translation the weights belong to.
- `source_pieces` [batch, src] string: the source's SentencePiece pieces, "</s>" last.
- `target_pieces` [batch, tgt] string: the translation's pieces, "</s>" last.
- `weights` [batch, tgt, src] float32: row t is the attention while the decoder predicts
  target piece t.
- `source_length`, `target_length` [batch] int32.
"""

from __future__ import annotations

import tensorflow as tf

from translator.constants import BOS_ID, EOS_ID, PAD_ID
from translator.ensemble import Ensemble
from translator.model import Seq2Seq
from translator.pipeline import prepare_source
from translator.tokenizer import Tokenizers

EOS_PIECE = "</s>"


def _pieces(tokenizer, ids: tf.Tensor) -> tf.Tensor:
    """Pieces of right-padded ids [batch, time]: EOS as "</s>", padding as ""."""
    pieces = tokenizer.id_to_string(ids)
    pieces = tf.where(tf.equal(ids, EOS_ID), tf.constant(EOS_PIECE), pieces)
    return tf.where(tf.equal(ids, PAD_ID), tf.constant(""), pieces)


def build_attention_function(
    model: Seq2Seq | Ensemble, tokenizers: Tokenizers, greedy, max_source_length: int
) -> tf.types.experimental.GenericFunction:
    """The exported `attention` function (see the module docstring).

    Args:
        model: a `Seq2Seq` with attention, or an `Ensemble` with a member with attention (the
            weights are then the mean of those members' weights).
        tokenizers: its tokenizers.
        greedy: the greedy translate function (`Translator.translate_function(1, 1, ...)`).
        max_source_length: `decode.max_source_length`: the most source pieces kept.
    """
    if model.attention == "none":
        raise ValueError("an attention signature needs a model with attention")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")], autograph=False)
    def attention(text: tf.Tensor) -> dict[str, tf.Tensor]:
        translation = greedy(text)["translations"][:, 0]  # [batch]
        source, _ = prepare_source(tokenizers.source, text, max_source_length)  # [batch, src]
        target = tokenizers.target.tokenize(translation)  # [batch, (pieces)]
        bos = tf.fill([target.nrows(), 1], BOS_ID)
        eos = tf.fill([target.nrows(), 1], EOS_ID)
        target_in = tf.concat([bos, target], axis=1).to_tensor(PAD_ID)  # [batch, tgt]
        target_out = tf.concat([target, eos], axis=1)  # [batch, (tgt)]
        weights = model.attention_weights(source, target_in)  # [batch, tgt, src]
        return {
            "translation": translation,
            "source_pieces": _pieces(tokenizers.source, source),
            "target_pieces": _pieces(tokenizers.target, target_out.to_tensor(PAD_ID)),
            "weights": tf.cast(weights, tf.float32),
            "source_length": tf.reduce_sum(tf.cast(tf.not_equal(source, PAD_ID), tf.int32), 1),
            "target_length": tf.cast(target_out.row_lengths(), tf.int32),
        }

    return attention
