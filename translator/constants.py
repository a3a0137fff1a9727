"""Facts every stage agrees on, defined once: special token ids, attention kinds, and the rule
that ties the decoder's width to the encoder's when there is no bridge."""

from __future__ import annotations

# SentencePiece ids of the special pieces (the tokenizer trains its models with these).
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

# Decoder attention: "none" is the card's context-vector model; the others score the encoder
# outputs with Luong's multiplicative or Bahdanau's additive attention (both with input feeding).
ATTENTION_KINDS = ("none", "luong", "bahdanau")
ATTENTION_SCORES = ATTENTION_KINDS[1:]

# LSTM loop: Keras's (cuDNN on a GPU, its generic loop on CPU), the project's fused CPU loop
# (translator/lstm.py; same weights), or "auto": the project's on CPU, Keras's on a GPU.
LSTM_KINDS = ("auto", "fast", "keras")

# A trained model directory's checkpoints a model is loaded (or fine-tuned) from: the best
# (averaged, else best validation BLEU, else latest) or the latest (see model_dir.py).
CHECKPOINT_CHOICES = ("best", "latest")


def decoder_width(units: int, decoder_units: int, bridge: bool) -> int:
    """The decoder LSTM width: `decoder_units`, or 2 * `units` (the concatenated forward and
    backward encoder states) when it is 0.

    Raises:
        ValueError: `decoder_units` differs from 2 * `units` without a bridge (the context
            vector is the decoder's initial state, so the widths must agree).
    """
    if decoder_units and not bridge and decoder_units != 2 * units:
        raise ValueError(
            f"decoder_units={decoder_units} needs bridge=True (without a bridge the decoder "
            f"width is 2 * units = {2 * units})"
        )
    return decoder_units or 2 * units


# A bfloat16 model decodes batches of fewer rows (sentences x beam) than this in float32: on an
# AMX CPU a bfloat16 matmul of one decoder step was slower than float32's up to 2-4 rows (1.2-
# 1.5x at one row, weights already bfloat16) and faster from 6-8; with the weights stored
# transposed (`search_step._matmul`) a one-row bfloat16 step was within noise of float32's, so
# the bound stayed (benchmarks/RESULTS.md).
FLOAT32_BELOW_ROWS = 6
# bfloat16 greedy drops its finished rows from the loop once at most this fraction of them still
# decode (`decoding.greedy_search`'s `compact`; 0: never). On the 1,000 test sentences (AMX CPU)
# 0.25-0.5 decoded 1.08-1.18x faster than never at 64 and 128 sentences per call, within noise
# of each other, with identical translations (benchmarks/RESULTS.md).
GREEDY_COMPACT = 0.5
# the same for bfloat16 beam search, counted in sentences (`decoding.beam_search`'s `compact`):
# beam 5 on the 1,000 test sentences 1.34x faster than never (AMX CPU, 128 sentences per call),
# the same translations (benchmarks/RESULTS.md)
BEAM_COMPACT = 0.5
# float32 searches lean too (from logits, finished sentences dropped, as bfloat16 always does:
# `api.build_translate_function`'s `lean`). On an AVX2-only CPU (float32), 1,000 test sentences:
# greedy 1.31x and beam 5 1.20x faster than the full search, the same 1,000 translations as the
# issue-19 code in both (benchmarks/RESULTS.md).
FLOAT32_LEAN = True
# values per block of `decoding._top_k`'s first pass (fastest of 16 to 128, RESULTS.md); the
# bfloat16 search step pads its vocabulary to a multiple of it, so no pass copies the logits
TOP_K_BLOCK = 64
