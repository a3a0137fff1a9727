"""End-of-epoch validation: loss and BLEU on the validation set, the best checkpoint, the
plateau rule's signal and early stopping."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from translator import evaluate
from translator.api import Translator
from translator.config import Config
from translator.data import ParallelCorpus
from translator.pipeline import EncodedCorpus, encode_corpus
from translator.tokenizer import Tokenizers
from translator.training.state import TrainState

log = logging.getLogger(__name__)


class Validator:
    """Validates the model of a run after each epoch and keeps the best checkpoint.

    The validation BLEU is that of the translations (with the `decode` section's defaults, as
    the API runs them) of the first `train.eval_bleu_sentences` validation pairs (all when 0).
    An epoch that improves on the best BLEU so far saves the model as the best checkpoint and
    resets the count of epochs without a gain; any other epoch adds one to it and tells the
    schedule (the plateau rule halves the learning rate).

    Under `train.time_budget` every validated model becomes the best checkpoint instead, so a
    finished run's is its last update's: the schedule anneals the learning rate to its floor
    there, and the annealed model beat the epoch a validation sample's BLEU had picked
    mid-run (60-minute runs, test BLEU 41.47 vs 41.03 and 41.78 vs 40.49; RESULTS.md).

    Args:
        config: the run's configuration.
        corpus: the validation pairs; None: no validation (records get no valid_* figures).
        tokenizers: the run's tokenizers.
        state: the run's state (model, schedule, best-BLEU counters and checkpoint).
        loss: the token-weighted mean loss over an encoded corpus.
    """

    def __init__(
        self,
        config: Config,
        corpus: ParallelCorpus | None,
        tokenizers: Tokenizers,
        state: TrainState,
        loss: Callable[[EncodedCorpus], float],
    ):
        self.config, self.corpus, self.state, self.loss = config, corpus, state, loss
        self.tokenizers, self.max_length = tokenizers, config.data.max_length
        self.encoded = None
        if corpus is not None:
            self.encoded = encode_corpus(
                tokenizers, corpus.sources, corpus.targets, config.data.max_length
            )
            self.translator = Translator(state.model, tokenizers, config)

    def validate(self) -> dict:
        """The epoch's validation figures (valid_loss, valid_bleu, valid_chrf), after updating
        the best checkpoint and the counters; {} without a validation corpus."""
        if self.corpus is None:
            return {}
        record = {"valid_loss": self.loss(self.encoded)}
        n = self.config.train.eval_bleu_sentences or len(self.corpus)
        hyps = self.translator.translate(self.corpus.sources[:n])
        scores = evaluate.score(hyps, self.corpus.targets[:n])
        record["valid_bleu"], record["valid_chrf"] = scores["bleu"], scores["chrf"]
        state = self.state
        improved = record["valid_bleu"] > float(state.best_bleu)
        if improved:
            state.best_bleu.assign(record["valid_bleu"])
            state.bad_epochs.assign(0)
        else:
            state.bad_epochs.assign_add(1)
        if improved or self.config.train.time_budget:
            state.save_best()
        state.schedule.after_validation(improved)
        return record

    def cost_estimate(self, sample: int = 32) -> float:
        """Seconds one `validate()` will take, estimated before training from a sample of the
        validation set: run once to trace the functions, then timed and scaled to the set.
        An untrained model decodes to the length limit, so this errs on the long side."""
        if self.corpus is None:
            return 0.0
        n = min(self.config.train.eval_bleu_sentences or len(self.corpus), len(self.corpus))
        k = min(sample, n)
        head = encode_corpus(
            self.tokenizers, self.corpus.sources[:k], self.corpus.targets[:k], self.max_length
        )
        seconds = 0.0
        for _ in range(2):  # the first run traces
            began = time.perf_counter()
            self.loss(head)
            self.translator.translate(self.corpus.sources[:k])
            seconds = time.perf_counter() - began
        return seconds * max(n, len(self.corpus)) / k

    def patience_spent(self) -> bool:
        """Whether early stopping is on and the BLEU has not improved for that many epochs."""
        patience = self.config.train.early_stopping_patience
        return bool(patience) and int(self.state.bad_epochs) >= patience
