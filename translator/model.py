"""The seq2seq model: BiLSTM encoder -> context vector (optional bridge) -> LSTM decoder.

`Seq2Seq.call` teacher-forces whole batches for training; `encode` and `search_step` (or the
plain `decode_step`) are the callbacks that greedy and beam search drive inside
`tf.while_loop`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from translator.config import ModelConfig
from translator.constants import ATTENTION_KINDS, decoder_width
from translator.decoder import Decoder
from translator.layers import Bridge, Encoder
from translator.search_step import search_step, store_weights, stored_variables


@keras.saving.register_keras_serializable(package="translator")
class Seq2Seq(keras.Model):
    """LSTM encoder-decoder for translation over right-padded id batches (pad id 0).

    The encoder's final forward and backward `(h, c)` states, concatenated (the context vector,
    `[batch, 2 * units]`), start the decoder, through a dense tanh bridge when `bridge` is set.
    With as many decoder as encoder layers, decoder layer i starts from encoder layer i's
    context; otherwise every decoder layer starts from the top encoder layer's context.

    Args:
        source_vocab_size: source vocabulary size.
        target_vocab_size: target vocabulary size.
        embedding_dim: width of both embeddings.
        units: encoder LSTM units per direction.
        encoder_layers: stacked BiLSTM layers.
        decoder_layers: stacked decoder LSTM layers.
        bridge: map the context vector to the decoder state with a dense tanh layer.
        decoder_units: decoder width with a bridge; 0 means `2 * units`. Without a bridge it
            must be 0 or `2 * units`.
        dropout: rate on embeddings and between layers (never recurrent: keeps cuDNN).
        attention: "none", "luong" or "bahdanau" (both with input feeding).
        tie_embeddings: share the target embedding matrix with the output projection.
        attentional_dim: with attention, the width of the attentional vector (fed to the next
            step, projected to the vocabulary); 0 means the decoder's width.
        lstm: LSTM loop, "auto" (the project's on CPU, Keras's cuDNN on a GPU), "fast" or
            "keras"; the weights and checkpoints are the same for all three.
    """

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        embedding_dim: int = 256,
        units: int = 256,
        encoder_layers: int = 1,
        decoder_layers: int = 1,
        bridge: bool = False,
        decoder_units: int = 0,
        dropout: float = 0.0,
        attention: str = "none",
        tie_embeddings: bool = False,
        lstm: str = "auto",
        attentional_dim: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        width = decoder_width(units, decoder_units, bridge)
        self.source_vocab_size = source_vocab_size
        self.target_vocab_size = target_vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.bridge = bridge
        self.decoder_units = decoder_units
        self.dropout = dropout
        self.attention = attention
        self.tie_embeddings = tie_embeddings
        self.lstm = lstm
        self.attentional_dim = attentional_dim
        self.encoder = Encoder(
            source_vocab_size, embedding_dim, units, encoder_layers, dropout, lstm, name="encoder"
        )
        for i in range(decoder_layers if bridge else 0):  # attributes, not a list: checkpoints
            setattr(self, f"bridge_{i}", Bridge(width, name=f"bridge_{i}"))
        self.decoder = Decoder(
            target_vocab_size,
            embedding_dim,
            width,
            decoder_layers,
            dropout,
            attention,
            tie_embeddings,
            memory_dim=2 * units,
            lstm=lstm,
            attentional_dim=attentional_dim,
            name="decoder",
        )

    def set_dropout(self, rate: float) -> None:
        """Sets the dropout rate of every layer; step functions traced before keep the old one.

        Raises:
            ValueError: `rate` > 0 for a model built with dropout 0 (its dropout layers have no
                random-number generator, and a built layer takes no new state).
        """
        if rate > 0 and not self.dropout:
            raise ValueError("a model built without dropout cannot take dropout > 0")
        for owner in (self, self.encoder, self.decoder):
            owner.dropout = rate
        self.encoder.drop.rate = self.decoder.drop.rate = rate

    @property
    def bridges(self) -> list[Bridge]:
        """One bridge per decoder layer (empty without a bridge)."""
        count = self.decoder_layers if self.bridge else 0
        return [getattr(self, f"bridge_{i}") for i in range(count)]

    def build(self, input_shape=None):
        shapes = [(self.encoder, (None, None)), (self.decoder, (None, None))]
        shapes += [(bridge, (None, 2 * self.units)) for bridge in self.bridges]
        for layer, shape in shapes:
            if not layer.built:
                layer.build(shape)

    def call(self, inputs, training=False):
        source_ids, target_in = inputs  # [batch, src], [batch, tgt]
        state = self.encode(source_ids, training=training)
        return self.decoder(ops.cast(target_in, "int32"), state, training=training)

    def encode(self, source_ids, training=False) -> dict[str, tf.Tensor]:
        """Encodes `source_ids` `[batch, src]` into the decoder's initial state.

        Returns:
            A flat dict whose values all lead with the batch dimension: `h{i}`, `c{i}`
            `[batch, width]` per decoder layer and, with attention, `memory`
            `[batch, src, 2 * units]`, `keys` `[batch, src, width]`, `memory_mask`
            `[batch, src]` (bool), `feed` `[batch, width]` and `attention` `[batch, src]`
            (float32). Other float values use the model's compute dtype.
        """
        source_ids = ops.cast(source_ids, "int32")
        memory, contexts = self.encoder(source_ids, training=training)
        if len(contexts) != self.decoder_layers:
            contexts = [contexts[-1]] * self.decoder_layers
        if self.bridge:
            contexts = [bridge(ctx) for bridge, ctx in zip(self.bridges, contexts, strict=True)]
        return self.decoder.initial_state(contexts, memory, ops.not_equal(source_ids, 0))

    def decode_step(self, tokens, state: dict) -> tuple[tf.Tensor, dict]:
        """One decoding step for `tokens` `[batch]` (the previous token; BOS first).

        Returns:
            `(log_probs [batch, vocab] float32, new_state)`; the new state has the same
            structure, shapes and dtypes as `state`.
        """
        logits, state = self.decoder.step(ops.cast(tokens, "int32"), state)
        return ops.log_softmax(logits, axis=-1), state

    def search_step(
        self, state: dict, beam_size: int = 1, logits: bool = False, fixed_in_state: bool = False
    ) -> tuple:
        """The step callback of greedy and beam search and the state it starts from.

        Same results as `decode_step` (bitwise in float32), with the set-up done once per
        call instead of at every step (`translator.search_step`): weights cast once, the
        encoder memory kept out of the loop state.

        Args:
            state: `encode`'s output `[batch, ...]`.
            beam_size: rows per sentence of the search that will run the step.
            logits: the step returns the float32 logits, not normalized (for
                `greedy_search(logits=True)`).
            fixed_in_state: every per-row tensor in the loop state, the encoder memory too: the
                state is a pair `(carried, fixed)` (for the searches' `compact`, which drops
                finished rows; `beam_search(fixed=True)`).

        Returns:
            `(step, loop_state)`: `step(tokens [N], loop_state) -> (log_probs [N, vocab]
            float32, loop_state)`, a `decoding.StepFn`, and its initial state `[batch, ...]`;
            in bfloat16, `vocab` is padded to a multiple of `TOP_K_BLOCK` with tokens of
            probability 0 (`translator.search_step`).
        """
        step, loop_state = search_step(self.decoder, state, beam_size, fixed_in_state)
        if logits:
            return (lambda tokens, carry: step(ops.cast(tokens, "int32"), carry)), loop_state

        def log_probs_step(tokens, carry):
            logits, carry = step(ops.cast(tokens, "int32"), carry)
            return ops.log_softmax(logits, axis=-1), carry

        return log_probs_step, loop_state

    def store_search_weights(self) -> list[tf.Variable]:
        """Keeps the search step's weights cast to the compute dtype in variables, so a search
        casts nothing (`search_step.store_weights`); returns them (none in float32)."""
        return store_weights(self.decoder)

    def stored_weights(self) -> list[tf.Variable]:
        """The variables `store_search_weights` made (an export must hold them)."""
        return stored_variables(self.decoder)

    def attention_weights(self, source_ids, target_in) -> tf.Tensor:
        """Teacher-forced attention weights `[batch, tgt, src]` (float32) for heatmaps."""
        state = self.encode(source_ids)
        return self.decoder(ops.cast(target_in, "int32"), state, return_attention=True)[1]

    def get_config(self):
        config = super().get_config()
        config.update(
            source_vocab_size=self.source_vocab_size,
            target_vocab_size=self.target_vocab_size,
            embedding_dim=self.embedding_dim,
            units=self.units,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            bridge=self.bridge,
            decoder_units=self.decoder_units,
            dropout=self.dropout,
            attention=self.attention,
            tie_embeddings=self.tie_embeddings,
            lstm=self.lstm,
            attentional_dim=self.attentional_dim,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def build_model(config: ModelConfig, source_vocab_size: int, target_vocab_size: int) -> Seq2Seq:
    """Constructs a `Seq2Seq` from `config` and creates its variables with a dummy batch.

    The model is built on return, so a checkpoint can be restored into it right away.
    """
    model = Seq2Seq(
        source_vocab_size,
        target_vocab_size,
        embedding_dim=config.embedding_dim,
        units=config.units,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        bridge=config.bridge,
        decoder_units=config.decoder_units,
        dropout=config.dropout,
        attention=config.attention,
        tie_embeddings=config.tie_embeddings,
        lstm=config.lstm,
        attentional_dim=config.attentional_dim,
        name="seq2seq",
    )
    dummy = tf.ones((1, 2), tf.int32)  # [batch, time], no padding
    model((dummy, dummy), training=False)
    return model
