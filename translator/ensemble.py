"""Ensembles: several trained models that share their SentencePiece models, decoded as one.

`check_members` refuses models that cannot be ensembled and names what differs: the source or
the target SentencePiece model (compared byte for byte), the languages, or the decoding length
limits (`decode.max_length`, `decode.max_source_length`). Members may differ in architecture
(attention or not, width, layers): only the vocabularies must match.

`Ensemble` holds the members' Keras models behind the interface translation uses from one
`Seq2Seq`, so `api.build_translate_function`, the export and the attention heatmap take either:

- `encode(source_ids)`: a tuple of the members' decoder states (each member encodes the same
  source ids: the tokenizers are shared).
- `decode_step(tokens, state)`: `decoding.mean_step`, the mean of the members' log-probabilities
  at each step, for greedy and beam search alike.
- `attention` / `attention_weights`: the mean of the attention weights of the members that have
  attention (each teacher-forced on the same translation); "none" when no member has any. Each
  member's weights are a distribution over the same source positions, so their mean is one too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from translator.config import Config
from translator.decoding import mean_step
from translator.errors import EnsembleError
from translator.model import Seq2Seq
from translator.model_dir import SOURCE_SPM, TARGET_SPM
from translator.tokenizer import Tokenizers

# Config keys every member must agree on: the ensemble decodes with one length limit and one
# language pair.
_SHARED_KEYS = (
    ("data", "source_lang"),
    ("data", "target_lang"),
    ("decode", "max_length"),
    ("decode", "max_source_length"),
)


@dataclass(frozen=True)
class Member:
    """What `check_members` compares of one member: where it is, its config, its tokenizers."""

    directory: Path
    config: Config
    tokenizers: Tokenizers


def check_members(members: Sequence[Member]) -> None:
    """Raises EnsembleError unless every member can decode with the first member's tokenizers,
    languages and length limits. The message names the member, its directory and what differs.
    """
    if len(members) < 2:
        raise EnsembleError(f"an ensemble needs at least two models, got {len(members)}")
    first = members[0]

    def name(index: int) -> str:
        return f"member {index + 1} ({members[index].directory})"

    for i, member in enumerate(members[1:], start=1):
        for side, file in (("source", SOURCE_SPM), ("target", TARGET_SPM)):
            if getattr(member.tokenizers, f"{side}_model") != getattr(
                first.tokenizers, f"{side}_model"
            ):
                raise EnsembleError(
                    f"ensemble {name(i)} has a different {side} SentencePiece model ({file}) "
                    f"than {name(0)}: members must share both SentencePiece models"
                )
        for section, key in _SHARED_KEYS:
            mine = getattr(getattr(member.config, section), key)
            theirs = getattr(getattr(first.config, section), key)
            if mine != theirs:
                raise EnsembleError(
                    f"ensemble {name(i)} has {section}.{key} {mine!r}, {name(0)} has "
                    f"{theirs!r}: members must agree on it"
                )


class Ensemble(tf.Module):
    """Two or more `Seq2Seq` models with one vocabulary, decoded as one model.

    Args:
        members: the models, in the order their directories were given.
    """

    def __init__(self, members: Sequence[Seq2Seq], name: str = "ensemble"):
        super().__init__(name=name)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two models, got {len(members)}")
        vocabularies = {(m.source_vocab_size, m.target_vocab_size) for m in members}
        if len(vocabularies) != 1:
            raise ValueError(f"ensemble members have different vocabulary sizes: {vocabularies}")
        self.members = list(members)

    @property
    def attention(self) -> str:
        """The attention kinds of the members that have attention, joined by "+"; or "none"."""
        kinds = sorted({m.attention for m in self.members if m.attention != "none"})
        return "+".join(kinds) or "none"

    def encode(self, source_ids, training=False) -> tuple[dict[str, tf.Tensor], ...]:
        """Each member's decoder state for `source_ids` `[batch, src]` (see `Seq2Seq.encode`)."""
        return tuple(m.encode(source_ids, training=training) for m in self.members)

    def decode_step(self, tokens, state: tuple) -> tuple[tf.Tensor, tuple]:
        """One step of every member; `(mean log_probs [batch, vocab] float32, new states)`."""
        return mean_step([m.decode_step for m in self.members])(tokens, state)

    def search_step(self, state: tuple, beam_size: int = 1) -> tuple:
        """The searches' step callback over every member (see `Seq2Seq.search_step`): each
        member's own search step, combined by `mean_step`; its loop state is the tuple of the
        members' loop states."""
        pairs = [m.search_step(s, beam_size) for m, s in zip(self.members, state, strict=True)]
        return mean_step([step for step, _ in pairs]), tuple(start for _, start in pairs)

    def stored_weights(self) -> list[tf.Variable]:
        """Every member's `Seq2Seq.stored_weights`."""
        return [v for m in self.members for v in m.stored_weights()]

    def attention_weights(self, source_ids, target_in) -> tf.Tensor:
        """The mean teacher-forced attention `[batch, tgt, src]` (float32) of the members
        with attention.

        Raises:
            ValueError: no member has attention.
        """
        weights = [
            tf.cast(m.attention_weights(source_ids, target_in), tf.float32)
            for m in self.members
            if m.attention != "none"
        ]
        if not weights:
            raise ValueError("no member of this ensemble has attention")
        return tf.add_n(weights) / float(len(weights))
